"""The learned full-resolution refiner as a folder holds it: `refiner.safetensors` (PyTorch, models/refiner.py), and
the exported graph (`refiner.onnx` / `refiner.mnn`), run without torch.

`sanaedit export` writes the refiner (models/refiner.py) as a graph with free height and width (multiples of its
pixel-unshuffle factor), fp32, beside `refiner.safetensors`; its manifest entry (model_index.json "graphs" ->
"refiner") holds the file, the I/O names, the factor and the margin (the receptive field's radius) the tiling
needs. `refine_tiles.RefinerGraph.refine` has `Refiner.refine`'s contract and shares its tiling, so an exported
folder refines with NumPy, PIL and its backend alone.
"""

from __future__ import annotations

from pathlib import Path

from sanaedit.backends import load_graph
from sanaedit.errors import ModelFolderError, first_line
from sanaedit.models.refine_tiles import REFINER_FILE, REFINER_GRAPH, RefinerGraph


def load_refiner_graph(folder: Path, manifest: dict, backend: str, threads: int | None) -> RefinerGraph | None:
    """The exported folder's refiner graph on `backend`, or None when its manifest lists none (no refiner, or an
    export from before the refiner was a graph: its `refiner.safetensors` then runs in PyTorch)."""
    entry = (manifest.get("graphs") or {}).get(REFINER_GRAPH)
    if entry is None:
        return None
    folder = Path(folder)
    try:
        path = folder / entry["file"]
        inputs, outputs = list(entry["inputs"]), list(entry["outputs"])
        factor, margin = int(entry["factor"]), int(entry["margin"])
        if factor < 1 or margin < 0 or margin % factor:
            raise ValueError(f"factor {factor} and margin {margin} do not fit")
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(
            f"{folder}: model_index.json's refiner graph entry is broken ({first_line(err)}); export the model again"
        ) from None
    if not path.is_file():
        raise ModelFolderError(f"{path}: the refiner graph model_index.json lists is missing; export the model again")
    return RefinerGraph(load_graph(path, backend, inputs, outputs, threads), factor, margin)


def folder_refiner(folder: str | Path):
    """A model or exported folder's learned refiner on PyTorch (models/refiner.py; None without one). A broken file is
    named at load time, not after an edit's sampling."""
    if not (Path(folder) / REFINER_FILE).is_file():
        return None  # nothing to load: torch is not imported for it
    from sanaedit.models.refiner import load_refiner

    try:
        return load_refiner(Path(folder))
    except Exception as err:  # safetensors, JSON, key and shape errors vary in type
        raise ModelFolderError(f"{Path(folder) / REFINER_FILE}: cannot load the refiner: {first_line(err)}") from err
