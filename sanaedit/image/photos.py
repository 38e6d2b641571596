"""Photos that need no download: the ones that ship inside installed packages (scikit-image's `skimage/data`, and
scikit-learn's sample images when it is installed), and random photo-like scenes drawn here. Training builds its
data from them, the export calibrates its int8 graphs on them and pruning scores blocks on them; none of these
needs the training filters (OpenCV) to read a photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Colour and grey photos of natural scenes in skimage/data (textures, diagrams, binary and tiny images left out).
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
    "color.png", "page.png", "text.png",
]  # fmt: skip


SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]


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
