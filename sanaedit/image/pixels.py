"""Pixel normalisation for `image/io.py`: any decoded PIL image -> upright 8-bit sRGB RGB, in bounded memory.

`normalise(image, reduce_to)` reads the EXIF orientation and colour profile first, box-reduces (if asked) before any
conversion, so conversions run on the small image, then converts: colour profile to sRGB, 16/32-bit and float to
8 bits by the type's range, transparency over white, then the orientation.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

WHITE, BLACK = (255, 255, 255), (0, 0, 0)  # what transparency is composited over: photos / masks
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# modes reduce() cannot average, and what each band is converted to first
_REDUCIBLE_AS = {"1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}

# EXIF orientation -> the transpose that makes the image upright (what ImageOps.exif_transpose does, minus
# rewriting the EXIF block, which raises struct.error / TypeError / AttributeError on damaged EXIF)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # damaged EXIF is advisory data: treat the image as stored upright
        return 1


def apply_icc_profile(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB through an embedded ICC profile (print CMYK, Display P3 phone photos) so colours are right.

    Without it CMYK is converted by a naive formula (visibly wrong for real print files). A broken profile is
    ignored rather than fatal: the pixels are still usable.
    """
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image


def white_level(kind: str, top: float) -> float:
    """The value that is white for a high-bit image of mode `kind` whose largest finite value is `top`. Integers:
    their type's range (8 or 16 bits as the values show, else their own maximum). Float: 1.0 for data in [0, 1] (the
    usual convention; scaled by 255 it came out black), else its own maximum (HDR or unnormalised data)."""
    if kind.startswith("I;16"):
        return 65535.0
    if kind == "F":
        return 1.0 if top <= 1.0 else float(top)
    return 255.0 if top <= 255 else 65535.0 if top <= 65535 else float(top)


def high_bit_to_l(image: Image.Image, kind: str, rows: int = 256) -> Image.Image:
    """16-bit / 32-bit int / 32-bit float grayscale -> 8-bit L scaled by `white_level` (not clipped at 255), in bands
    of rows (float32), so a large image costs its own size plus one band. NaN -> black, +inf -> white, -inf and
    negatives -> black, without numpy warnings: they are pixels, not errors."""
    width, height = image.size
    top = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for y in range(0, height, rows):
            band = np.asarray(image.crop((0, y, width, min(height, y + rows))), dtype=np.float32)
            finite = band[np.isfinite(band)]
            top = max(top, float(finite.max()) if finite.size else 0.0)
        white = white_level(kind, top)
        out = np.empty((height, width), dtype=np.uint8)
        for y in range(0, height, rows):
            band = np.asarray(image.crop((0, y, width, min(height, y + rows))), dtype=np.float32)
            band = np.nan_to_num(band, nan=0.0, posinf=white, neginf=0.0)
            np.multiply(band, 255.0 / white, out=band)
            np.add(band, 0.5, out=band)
            np.clip(band, 0, 255, out=band)
            out[y : y + len(band)] = band
    return Image.fromarray(out, "L")


def to_rgb(image: Image.Image, kind: str | None = None, matte: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, compositing transparency over `matte` (white: how a viewer shows a photo; masks use
    black, so what is transparent is kept). `kind`: the mode the file was decoded in, when `image` was reduced from
    it (16-bit reduced as 32-bit is still scaled as 16-bit)."""
    kind = kind or image.mode
    if image.mode in HIGH_BIT_MODES:
        image = high_bit_to_l(image, kind)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, matte)
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, CMYK (PIL applies the inversion Adobe JPEGs need), YCbCr, LAB


def reduce(image: Image.Image, factor: int, rows: int = 512) -> Image.Image:
    """Box-average by `factor`, band by band: Image.reduce itself copies the whole image first for alpha modes
    (premultiplied) and cannot average palette, 1-bit or 16-bit images, which are converted here one band at a time.
    The cost is the reduced image plus one band."""
    mode = _REDUCIBLE_AS.get(image.mode, image.mode)
    if image.mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
    width, height = image.size
    rows = max(factor, rows // factor * factor)
    out = Image.new(mode, ((width + factor - 1) // factor, (height + factor - 1) // factor))
    for y in range(0, height, rows):
        band = image.crop((0, y, width, min(height, y + rows)))
        out.paste((band.convert(mode) if mode != image.mode else band).reduce(factor), (0, y // factor))
    out.info = {k: v for k, v in image.info.items() if k != "transparency" or mode == image.mode}
    return out


def normalise(image: Image.Image, reduce_to: int | None = None, matte: tuple[int, int, int] = WHITE) -> Image.Image:
    """Upright 8-bit sRGB RGB, transparency over `matte`; with `reduce_to`, box-reduced first by the largest integer
    factor that keeps the longer side >= `reduce_to`."""
    turn = orientation(image)
    kind, icc = image.mode, image.info.get("icc_profile")
    factor = max(image.size) // reduce_to if reduce_to else 1
    small = reduce(image, factor) if factor >= 2 else image
    out = to_rgb(apply_icc_profile(small, icc), kind, matte)
    out = out.transpose(UPRIGHT[turn]) if turn in UPRIGHT else out
    return out.copy() if out is image else out  # always a new image: the caller may close the one it opened
