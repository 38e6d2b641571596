"""The bundled comic model's training set, built offline from photos that ship inside installed packages.

Sources: scikit-image's `skimage/data` photos, scikit-learn's sample images when scikit-learn is installed, and
synthetic scenes (shapes, gradients, texture) drawn here. Targets come from the deterministic comic filter
(`sanaedit.train.filters.comic`). Whole photos are held out for evaluation (never cropped into the training set),
Chelsea the cat among them: she is the README's sample photo. Everything is seeded, so the same packages give the
same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sanaedit.core.choices import Padding
from sanaedit.image.io import load_image, preprocess
from sanaedit.image.photos import package_photos, synthetic_scene
from sanaedit.pipeline import COMIC_PROMPT
from sanaedit.train.filters.comic import comic
from sanaedit.train.filters.ghibli import ghibli

HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg", "china.jpg")
# style -> (target filter, the prompt recorded with each pair)
GHIBLI_PROMPT = "Ghibli-style: soft contrast, warm tones, slight linework."
STYLES = {"comic": (comic, COMIC_PROMPT), "ghibli": (ghibli, GHIBLI_PROMPT)}
PADDING = Padding.REFLECT  # the padding the bundled model is trained and run with (PipelineConfig.padding)


def random_crops(
    photo: Image.Image, n: int, resolution: int, rng: np.random.Generator, nonsquare: float = 0.0
) -> list[Image.Image]:
    """n crops of `photo` at its own resolution, at several scales (short side from max(30%, 0.75 R) to 100% of the
    photo's, log-uniform) and places, a fraction `nonsquare` of them with an aspect ratio between 1:2 and 2:1,
    each mirrored at random."""
    w, h = photo.size
    short = min(w, h)
    low = min(short, max(0.3 * short, 0.75 * resolution))
    crops = []
    for _ in range(n):
        side = float(np.exp(rng.uniform(np.log(low), np.log(short)))) if low < short else float(short)
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if rng.random() < nonsquare else 1.0
        cw, ch = min(w, max(8, round(side * aspect**0.5))), min(h, max(8, round(side / aspect**0.5)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def model_view(image: Image.Image, resolution: int, padding: str = PADDING) -> Image.Image:
    """What the model sees of `image`: the pipeline's own preprocessing (resize to R, pad to a square), as a PIL
    image. Sources and targets are stored this way, so the training loader's preprocessing is the identity."""
    pixels, _ = preprocess(image, resolution, padding)
    array = np.clip(np.round((pixels[0] + 1) * np.float32(127.5)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(array)


def pair(
    image: Image.Image, resolution: int, padding: str = PADDING, style: str = "comic"
) -> tuple[Image.Image, Image.Image]:
    """(source, target) at the model's resolution for a picture at its own resolution. The target is the style's
    filter applied at the picture's own resolution, then brought to the model's view: what the full-resolution
    result looks like at R (so the edit, upsampled, is scored against the filter at full resolution)."""
    target = STYLES[style][0](image)
    return model_view(image, resolution, padding), model_view(target, resolution, padding)


def _write_split(out: Path, items: list[tuple[str, Image.Image]], resolution: int, style: str = "comic") -> None:
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, image in items:
        source, target = pair(image, resolution, style=style)
        source.save(out / "source" / f"{name}.png")
        target.save(out / "target" / f"{name}.png")
        lines.append(
            json.dumps({"source": f"source/{name}.png", "target": f"target/{name}.png", "prompt": STYLES[style][1]})
        )
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def build_comic_dataset(
    out_dir: str | Path,
    resolution: int = 256,
    crops_per_photo: int = 48,
    synthetic: int = 256,
    eval_crops: int = 8,
    seed: int = 0,
    nonsquare: float = 0.0,
    whole: int = 0,
    size: int | None = None,
    style: str = "comic",
) -> dict[str, int]:
    """Write `out_dir/train` and `out_dir/eval` (source/, target/, manifest.jsonl); return the sample counts.

    Training samples: `crops_per_photo` crops of each training colour photo, half as many of a grey one (several
    scales, a fraction `nonsquare` not square), `whole` copies of each whole photo (mirrored every other time),
    `synthetic` scenes drawn at 1-2.5x the resolution. Every sample is a picture at its own resolution, turned into
    a (source, target) pair by `pair`.
    eval holds each held-out photo whole plus `eval_crops` crops of it at the model's resolution, and the whole
    held-out photos at their own resolution in `eval/full/` (for scores at full resolution).
    `size` stores the pictures at that resolution instead of `resolution` (a stage training at another resolution,
    e.g. the autoencoder on 128 px views of the 256 px set, then reads the same files resized).
    `style` chooses the targets' filter: "comic" (sanaedit.train.filters.comic) or "ghibli"
    (sanaedit.train.filters.ghibli, the LoRA style).
    A finished build is marked by out_dir/done.json and reused when its settings match.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    out = Path(out_dir)
    resolution = size or resolution
    settings = dict(
        resolution=resolution, crops_per_photo=crops_per_photo, synthetic=synthetic, eval_crops=eval_crops, seed=seed,
        nonsquare=nonsquare, whole=whole, padding=PADDING, version=2, **({"style": style} if style != "comic" else {}),
    )  # fmt: skip
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        return json.loads(done.read_text())["counts"]
    rng = np.random.default_rng(seed)
    photos = package_photos()
    if not photos:
        raise RuntimeError("no bundled photos found: is scikit-image installed?")
    train, held = [], []
    (out / "eval" / "full").mkdir(parents=True, exist_ok=True)
    for name, path in photos.items():
        photo = load_image(path)  # the inference loader: EXIF orientation, colour profile, 8-bit RGB
        stem = Path(name).stem
        if name in HELD_OUT:
            photo.save(out / "eval" / "full" / f"{stem}.png")
            held.append((stem, photo))
            crops = random_crops(photo, eval_crops, resolution, rng, nonsquare)
            held += [(f"{stem}-{i:03d}", c) for i, c in enumerate(crops)]
        else:
            small = np.asarray(photo.resize((32, 32)))
            grey = bool((small.max(2) == small.min(2)).all())
            n = crops_per_photo // 2 if grey else crops_per_photo  # colour photos are what people edit: more of them
            crops = random_crops(photo, n, resolution, rng, nonsquare)
            train += [(f"{stem}-{i:03d}", c) for i, c in enumerate(crops)]
            flip = Image.Transpose.FLIP_LEFT_RIGHT
            train += [(f"{stem}-whole{i}", photo.transpose(flip) if i % 2 else photo) for i in range(whole)]
    for i in range(synthetic):
        size = int(rng.integers(resolution, int(2.5 * resolution) + 1))
        train.append((f"synthetic-{i:04d}", synthetic_scene(rng, size)))
    _write_split(out / "train", train, resolution, style)
    _write_split(out / "eval", held, resolution, style)
    counts = {"train": len(train), "eval": len(held), "photos": len(photos) - len(held) // (1 + eval_crops)}
    done.write_text(
        json.dumps({"settings": settings, "counts": counts, "held_out": sorted(set(HELD_OUT) & set(photos))})
    )
    return counts
