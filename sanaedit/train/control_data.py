"""Editing pairs for the controlnet stage from a folder of photos (`data.photos`): each photo and its target, as the
model sees them, in a manifest folder the stage reads. The control image is not stored: the stage computes it
from each photo as it reads it (`data.ManifestDataset`, kind "control"), as an edit does. So the photo is stored at
its own resolution (padded to its square as the pipeline pads it: the edges are found there, image/edges.py), the
target at the model's.

The targets come from the model's own recipe (`train.controlnet.targets`): "comic", the bundled model's filter
(sanaedit/train/filters/comic.py) at the photo's own resolution, as its training pairs were made; or "teacher",
the teacher model's own edit of the photo (seed 0, its own settings). A built folder is reused while the photos
and the settings are the same (`done.json`), so a resumed run builds nothing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sanaedit.errors import DataError
from sanaedit.image.folders import list_folder
from sanaedit.image.io import load_image

TARGETS = ("teacher", "comic")


def photos_fingerprint(photos: list[Path]) -> str:
    h = hashlib.sha256()
    for path in photos:
        stat = path.stat()
        h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_photo_pairs(
    photos_dir: str | Path,
    out_dir: str | Path,
    resolution: int,
    targets: str = "teacher",
    teacher: str | Path | None = None,
    padding: str | None = None,
    progress: bool = True,
) -> Path:
    """Write `out_dir/train` (source/, target/, manifest.jsonl) from the photos in `photos_dir`; returns it."""
    from tqdm.auto import tqdm

    from sanaedit.train.comic_data import PADDING, STYLES, model_view

    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}; choose one of {', '.join(TARGETS)}")
    if targets == "teacher" and teacher is None:
        raise ValueError("teacher targets need a teacher model: set model.from or train.controlnet.teacher")
    photos = list_folder(Path(photos_dir)).images if Path(photos_dir).is_dir() else []
    if not photos:
        raise DataError(f"{photos_dir}: no photos in this folder (data.photos)")
    out = Path(out_dir) / "train"
    padding = padding or PADDING
    settings = {
        "resolution": resolution,
        "targets": targets,
        "teacher": str(teacher) if targets == "teacher" else None,
        "padding": str(padding),
        "photos": photos_fingerprint(photos),
        "version": 2,  # 2: photos stored at their own resolution
    }
    done = Path(out_dir) / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        return out
    edit = teacher_editor(teacher) if targets == "teacher" else STYLES["comic"][0]
    prompt = STYLES["comic"][1] if targets == "comic" else teacher_prompt(teacher)
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, path in enumerate(tqdm(photos, desc="editing pairs", unit="photo", disable=not progress)):
        photo = load_image(path)
        name = f"{i:05d}-{path.stem}"
        model_view(photo, max(photo.size), padding).save(out / "source" / f"{name}.png")  # its own resolution
        model_view(edit(photo), resolution, padding).save(out / "target" / f"{name}.png")
        lines.append(json.dumps({"source": f"source/{name}.png", "target": f"target/{name}.png", "prompt": prompt}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    done.write_text(json.dumps({"settings": settings, "count": len(lines)}))
    return out


def teacher_editor(teacher: str | Path):
    """photo -> the teacher model's edit of it at the photo's size (seed 0, its own settings)."""
    import torch

    from sanaedit.load import load_model_folder

    pipe = load_model_folder(teacher)
    return lambda photo: pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]


def teacher_prompt(teacher: str | Path) -> str:
    """The teacher's own prompt (model_index.json), recorded with each pair: what its edits were made with."""
    from sanaedit.formats.index import read_index

    return read_index(Path(teacher)).get("pipeline", {}).get("prompt", "")
