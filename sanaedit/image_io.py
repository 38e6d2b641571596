"""Reading photos we do not trust and writing results we must not lose.

`load_image` decodes by content (never by extension), refuses decompression bombs before decoding pixels, and
returns an upright 8-bit RGB image whatever came in (EXIF rotation, CMYK, 16-bit, palette with transparency,
alpha, grayscale, animations -> first frame). Every failure is an `ImageLoadError` whose one-line message
names the file and the problem. `save_image_atomic` never leaves a partial file behind.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000: far beyond a 512 px model input, far below a bomb
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, compositing transparency over white (how a viewer shows it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: scale to 8 bits by the type's range, not by clipping at 255
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK (PIL applies the inversion Adobe JPEGs need), YCbCr, LAB, RGB


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as an upright RGB image, or raise ImageLoadError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path), max_pixels)


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`load_image` for bytes in memory (an upload): nothing is written to disk."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below names the size; PIL still raises its error beyond 2x its limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                        "(decompression-bomb guard); downscale it first"
                    )
                if width < 1 or height < 1:
                    raise ImageLoadError(f"{name}: image has no pixels ({width}x{height})")
                image.seek(0)  # animations: the first frame
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image (unrecognised or corrupt content)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL reports truncated and damaged files as OSError ("image file is truncated", "broken data stream")
        raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from None


def save_image_atomic(image: Image.Image, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write `image` to `path` (format from the extension) via a temp file + rename: never a partial file."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use one of {sorted(SAVE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
            image.save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
