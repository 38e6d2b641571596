"""One reader per format on disk, behind one protocol (formats/source.py): `open_source(folder)` picks it from what
the folder's index says it holds (diffusers' `model_index.json` convention), so every caller loads every format
the same way."""

from __future__ import annotations

from pathlib import Path

from sanaedit.core.extras import require
from sanaedit.formats.index import EXPORT_CLASS, folder_kind, is_release_layout, read_index
from sanaedit.formats.source import ModelSource


def open_source(folder: str | Path) -> ModelSource:
    """The reader for `folder`: a PyTorch model folder, an ONNX export, or MNN graphs in the published release's
    layout (the release's files alone, or our MNN export). Opening reads the index and checks what planning needs;
    a missing or broken folder raises ModelFolderError naming it."""
    folder = Path(folder)
    if is_release_layout(folder):
        from sanaedit.formats.release import ReleaseFolder

        return ReleaseFolder(folder)
    if folder_kind(folder) == EXPORT_CLASS:
        from sanaedit.formats.exported import ExportedFolder

        return ExportedFolder(folder)
    read_index(folder)  # a missing or broken folder is named as such, before asking for PyTorch
    require("torch", f"{folder} is a PyTorch model folder: running it")
    from sanaedit.formats.torch_folder import TorchFolder

    return TorchFolder(folder)
