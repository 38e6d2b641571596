"""Training data of the `refiner` stage: crops of (photo, the editor's own output, target) at full resolution.

The refiner (models/refiner.py) corrects the editor's guided-upsampled output at the photo's own size, so it is
trained on exactly that: each training picture at its own resolution is edited once by the frozen model the stage
starts from (its own steps, seed 0, guided upsampling), and the triple is cut into fixed, seeded crops. Everything
is cached under the stage folder, keyed by the pictures and the model's weights, so `--resume` and reruns skip it.

Pictures: the bundled builder's training photos (`data.build: comic`; the held-out photos are never used) at
several scales, plus synthetic scenes, with targets from the style's filter at each picture's own resolution; or
any manifest of editing pairs (`data.manifest`), read at their own size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from sanaedit.core.choices import Upsample
from sanaedit.core.tempfiles import replacing
from sanaedit.image.io import load_image
from sanaedit.train.sources import tensor_digest

logger = logging.getLogger(__name__)

SCALES = (1.0, 0.75, 0.5)  # each training photo at these fractions of its size (the smallest kept >= MIN_SIDE)
MIN_SIDE = 256  # pictures with a shorter long side are left out (below the model's own resolution)


def bundled_pictures(style: str, synthetic: int, seed: int) -> list[tuple[str, Image.Image, Image.Image]]:
    """(name, picture, target) for every training photo of the bundled set at SCALES, and `synthetic` scenes."""
    from sanaedit.image.photos import package_photos, synthetic_scene
    from sanaedit.train.comic_data import HELD_OUT, STYLES

    rng = np.random.default_rng(seed)
    pictures = []
    for name, path in package_photos().items():
        if name in HELD_OUT:
            continue
        photo = load_image(path)
        for scale in SCALES:
            size = (round(photo.width * scale), round(photo.height * scale))
            if max(size) >= MIN_SIDE:
                pictures.append((f"{Path(name).stem}-{scale}", photo.resize(size, Image.Resampling.LANCZOS)))
    pictures += [(f"synthetic-{i:03d}", synthetic_scene(rng, int(rng.integers(384, 769)))) for i in range(synthetic)]
    return [(name, picture, STYLES[style][0](picture)) for name, picture in pictures]


def manifest_pictures(manifest: str | Path) -> list[tuple[str, Image.Image, Image.Image]]:
    """(name, source, target) of a manifest of editing pairs, each at its own size (same size required)."""
    from sanaedit.train.data import ManifestDataset

    dataset = ManifestDataset(manifest, kind="edit", default_prompt="(unused)")  # its checks and messages
    pictures = []
    for i, r in enumerate(dataset.records):
        source, target = load_image(dataset.root / r["source"]), load_image(dataset.root / r["target"])
        if source.size != target.size:
            raise ValueError(f"{manifest}: record {i}: source {source.size} and target {target.size} differ in size")
        pictures.append((f"{i:05d}", source, target))
    return pictures


class RefinerCrops(Dataset):
    """Fixed crops of (photo, edit, target), uint8 on disk, floats in [0, 1] out."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.photo, self.edit, self.target = tensors["photo"], tensors["edit"], tensors["target"]

    def __len__(self) -> int:
        return len(self.photo)

    def __getitem__(self, i: int) -> dict:
        f = lambda x: x[i].float() / 255.0  # noqa: E731
        return {"index": i, "prompt": "", "source": f(self.photo), "edit": f(self.edit), "target": f(self.target)}


def refiner_crops(
    pipe,
    pictures: list[tuple[str, Image.Image, Image.Image]],
    cache_dir: Path,
    crop: int,
    crops_per_picture: int,
    seed: int,
    progress: bool = True,
) -> RefinerCrops:
    """Edit every picture with `pipe` (guided upsampling), cut the crops, cache them; a cache of other pictures,
    settings or weights is rebuilt."""
    h = hashlib.sha256()
    for name, picture, target in pictures:
        h.update(name.encode() + np.asarray(picture).tobytes() + np.asarray(target).tobytes())
    settings = dict(crop=crop, crops=crops_per_picture, seed=seed, steps=pipe.config.num_inference_steps)
    key = f"{h.hexdigest()[:16]}-{tensor_digest([pipe.transformer])}-{json.dumps(settings, sort_keys=True)}"
    cache = Path(cache_dir) / "crops.safetensors"
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(cache, "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return RefinerCrops(load_file(cache))
    from tqdm.auto import tqdm

    from sanaedit.train.evaluate import pipeline_editor

    rng = np.random.default_rng(seed)
    edit_guided = pipeline_editor(pipe, Upsample.GUIDED, seed=0)  # what the refiner will be given
    out: dict[str, list[np.ndarray]] = {"photo": [], "edit": [], "target": []}
    for name, picture, target in tqdm(pictures, desc="refiner data", unit="picture", disable=not progress):
        if min(picture.size) < crop:
            logger.info("refiner data: %s (%dx%d) is smaller than a %d px crop; left out", name, *picture.size, crop)
            continue
        arrays = [np.asarray(x.convert("RGB")) for x in (picture, edit_guided(picture), target)]
        for _ in range(crops_per_picture):
            y, x = (int(rng.integers(0, n - crop + 1)) for n in arrays[0].shape[:2])
            for k, a in zip(out, arrays):
                out[k].append(a[y : y + crop, x : x + crop])
    if not out["photo"]:
        raise ValueError(f"refiner stage: no picture is at least {crop} px on its short side; lower train.refiner.crop")
    tensors = {k: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous() for k, v in out.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with replacing(cache) as (fd, tmp):
        os.close(fd)
        save_file(tensors, tmp, metadata={"key": key})
    return RefinerCrops(tensors)
