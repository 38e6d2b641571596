"""The bundled comic model's training set, built offline from photos that ship inside installed packages.

Sources: scikit-image's `skimage/data` photos, scikit-learn's sample images when scikit-learn is installed, and
synthetic scenes (shapes, gradients, texture) drawn here. Targets come from the deterministic comic filter
(`sanaedit.comic`). Whole photos are held out for evaluation (never cropped into the training set), Chelsea the
cat among them: she is the README's sample photo. Everything is seeded, so the same packages give the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..comic import comic
from ..pipeline import COMIC_PROMPT

# Colour and grey photos of natural scenes in skimage/data (textures, diagrams, binary and tiny images left out).
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
    "color.png", "page.png", "text.png",
]  # fmt: skip
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg", "china.jpg")


def package_photos() -> dict[str, Path]:
    """name -> path of every bundled photo found in the installed packages (sorted, deterministic)."""
    import skimage

    found: dict[str, Path] = {}
    data = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        if (data / name).is_file():
            found[name] = data / name
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        found.update({n: images / n for n in SKLEARN_PHOTOS if (images / n).is_file()})
    except ImportError:
        pass
    return dict(sorted(found.items()))


def synthetic_scene(rng: np.random.Generator, size: int) -> Image.Image:
    """A random 'photo-like' scene: a gradient sky/ground, soft shaded shapes, noise texture, slight blur."""
    y = np.linspace(0, 1, size)[:, None, None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    canvas = (top * (1 - y) + bottom * y) * np.ones((size, size, 3))
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        box = [x0, y0, x0 + w, y0 + h]
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            pts = [tuple(p) for p in (rng.uniform(0, 1, (3, 2)) * size)]
            draw.polygon(pts, fill=colour)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(size / 200)), dtype=np.float32)
    shade = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), size)[None, :, None]  # soft lighting
    arr = arr * shade + rng.normal(0, 6, arr.shape)  # sensor-like texture
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def random_crops(photo: Image.Image, n: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """n square crops at random scales (35-100% of the short side) and places, random mirror, resized to `size`."""
    photo = photo.convert("RGB")
    w, h = photo.size
    crops = []
    for _ in range(n):
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def _write_split(out: Path, pairs: list[tuple[str, Image.Image]]) -> None:
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, image in pairs:
        image.save(out / "source" / f"{name}.png")
        comic(image).save(out / "target" / f"{name}.png")
        lines.append(
            json.dumps({"source": f"source/{name}.png", "target": f"target/{name}.png", "prompt": COMIC_PROMPT})
        )
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def build_comic_dataset(
    out_dir: str | Path,
    resolution: int = 128,
    crops_per_photo: int = 48,
    synthetic: int = 256,
    eval_crops: int = 8,
    seed: int = 0,
) -> dict[str, int]:
    """Write `out_dir/train` and `out_dir/eval` (source/, target/, manifest.jsonl); return the sample counts.

    eval holds each held-out photo whole (padded to a square by the pipeline, as at inference) at `resolution`,
    plus `eval_crops` crops of it.
    A finished build is marked by out_dir/done.json and reused when its settings match.
    """
    out = Path(out_dir)
    settings = dict(
        resolution=resolution, crops_per_photo=crops_per_photo, synthetic=synthetic, eval_crops=eval_crops, seed=seed
    )
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        return json.loads(done.read_text())["counts"]
    rng = np.random.default_rng(seed)
    photos = package_photos()
    if not photos:
        raise RuntimeError("no bundled photos found: is scikit-image installed?")
    train, held = [], []
    for name, path in photos.items():
        with Image.open(path) as im:
            photo = im.convert("RGB")
        stem = Path(name).stem
        if name in HELD_OUT:
            held.append((stem, photo.resize(_fit(photo.size, resolution), Image.Resampling.BICUBIC)))
            held += [(f"{stem}-{i:03d}", c) for i, c in enumerate(random_crops(photo, eval_crops, resolution, rng))]
        else:
            train += [
                (f"{stem}-{i:03d}", c) for i, c in enumerate(random_crops(photo, crops_per_photo, resolution, rng))
            ]
    train += [(f"synthetic-{i:04d}", synthetic_scene(rng, resolution)) for i in range(synthetic)]
    _write_split(out / "train", train)
    _write_split(out / "eval", held)
    counts = {"train": len(train), "eval": len(held), "photos": len(photos) - len(held)}
    done.write_text(
        json.dumps({"settings": settings, "counts": counts, "held_out": sorted(set(HELD_OUT) & set(photos))})
    )
    return counts


def _fit(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(w, h) scaled so the long side is `resolution`."""
    w, h = size
    s = resolution / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))
