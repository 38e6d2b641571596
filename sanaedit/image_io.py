"""Reading photos we do not trust and writing results we must not lose.

One image path for training, evaluation, batch, the server and every runtime: `load_image` / `decode_image` /
`upright_rgb` make the picture, `preprocess` turns it into the model's input and `postprocess` turns the model's
output back into a picture the input's own size.

`load_image` decodes by content (never by extension), refuses decompression bombs before decoding pixels, and
returns an upright 8-bit sRGB image whatever came in (EXIF rotation, CMYK, 16-bit, palette with transparency,
alpha, grayscale, animations -> first frame, embedded colour profiles). Every failure is an `ImageLoadError`
whose one-line message names the file and the problem. `save_image_atomic` never leaves a partial file behind.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000: far beyond a 512 px model input, far below a bomb
SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


def _apply_icc_profile(image: Image.Image) -> Image.Image:
    """Convert to sRGB through an embedded ICC profile (print CMYK, Display P3 phone photos) so colours are right.

    Without it CMYK is converted by a naive formula (visibly wrong for real print files). A broken profile is
    ignored rather than fatal: the pixels are still usable.
    """
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image


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


# EXIF orientation -> the transpose that makes the image upright (what ImageOps.exif_transpose does, minus
# rewriting the EXIF block, which raises struct.error / TypeError / AttributeError on damaged EXIF)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # damaged EXIF is advisory data: treat the image as stored upright
        return 1


def upright_rgb(image: Image.Image) -> Image.Image:
    """An opened image as the model sees it: EXIF orientation applied, colour profile converted to sRGB, 8-bit RGB
    with transparency over white. What `load_image` returns; datasets holding PIL images use it directly."""
    orientation = _orientation(image)
    image = _to_rgb(_apply_icc_profile(image))
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as an upright RGB image, or raise ImageLoadError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    if not path.is_file():  # a FIFO or device would block or never end
        raise ImageLoadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path), max_pixels)


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`load_image` for bytes in memory (an upload): nothing is written to disk."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _is_heif(source: Path | io.BytesIO) -> bool:
    """An ISO media file with a HEIC/HEIF brand (iPhone photos): worth a message of its own."""
    try:
        if isinstance(source, Path):
            with source.open("rb") as f:
                head = f.read(12)
        else:
            head = source.getvalue()[:12]
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1")


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below names the size; PIL still raises its error beyond 2x its limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # "Corrupt EXIF data" noise
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
                return upright_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        if _is_heif(source):
            raise ImageLoadError(
                f"{name}: HEIC/HEIF photo, which this install cannot read; export it as JPEG"
            ) from None
        raise ImageLoadError(f"{name}: not an image (unrecognised or corrupt content)") from None
    except PermissionError:
        raise ImageLoadError(f"{name}: cannot read it (permission denied)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL reports truncated and damaged files as OSError ("image file is truncated", "broken data stream")
        raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from None
    except Exception as err:  # decoders meet hostile bytes with other types too; never let one escape raw
        raise ImageLoadError(f"{name}: cannot decode it ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Restore:
    """How to undo preprocessing: the input size and where it sits in the padded square."""

    width: int
    height: int
    left: int
    top: int
    side: int


def preprocess(image: Image.Image, resolution: int) -> tuple[torch.Tensor, Restore]:
    """RGB PIL image -> [1,3,R,R] in [-1,1]: zero-pad to a centred square, bilinear resize to R."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    if width != height:
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(image, (left, top))
        image = square
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1
    return pixels[None], Restore(width, height, left, top, side)


def postprocess(pixels: torch.Tensor, restore: Restore | None) -> Image.Image:
    """[1,3,R,R] in [-1,1] -> PIL image; with `restore`, crop the padding and resize to the input's size."""
    array = (pixels[0].float() * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    image = Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
    if restore is None:
        return image
    scale = image.width / restore.side
    box = (
        restore.left * scale,
        restore.top * scale,
        (restore.left + restore.width) * scale,
        (restore.top + restore.height) * scale,
    )
    return image.resize((restore.width, restore.height), Image.Resampling.BILINEAR, box=box)


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
