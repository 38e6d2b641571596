"""Reading photos we do not trust and writing results we must not lose.

One image path for training, evaluation, batch, the server and every runtime: `load_image` / `decode_image` /
`upright_rgb` make the picture, `preprocess` turns it into the model's input and `postprocess` turns the model's
output back into a picture the input's own size.

`load_image` decodes by content (never by extension), accepts only the raster formats in `RASTER_FORMATS` (never a
format Pillow hands to an external program, such as EPS to Ghostscript), refuses decompression bombs and thin
strips from the header, before decoding pixels, and returns an upright 8-bit sRGB image whatever came in (EXIF
rotation, CMYK, 16-bit, 32-bit float, palette with transparency, alpha, grayscale, animations -> first frame,
embedded colour profiles). Every failure is an `ImageLoadError` whose one-line message names the file and the
problem. `save_image_atomic` never leaves a partial file behind.

Memory: `decode_cost` says from the header what decoding will allocate; `decode_reduced` decodes no larger than a
model needs (JPEG scaled by the codec while decoding, other formats box-reduced in bands right after) and converts
colours after reducing; `preprocess` never builds the padded square at the input's resolution.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sanaedit.core.arrays import to_numpy
from sanaedit.core.choices import Padding
from sanaedit.core.tempfiles import remove_stale, replacing
from sanaedit.errors import ImageLoadError
from sanaedit.image.pixels import BLACK, WHITE, normalise, orientation

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000: far beyond a 512 px model input, far below a bomb
# A strip is padded to a square of its longer side (40000x1 -> 40000x40000). Past 20:1 the photo fills under 5% of
# the model's input, so it is refused from the header (phone panoramas are 2:1 to 10:1).
DEFAULT_MAX_ASPECT = 20
SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
Image.init()
# Raster photo formats, decoded in-process by Pillow's own plugins (JPEG includes MPO). Every other format Pillow
# knows is refused: EPS is rendered by Ghostscript, an external interpreter; the rest (PSD, FITS, SPIDER, ...) are
# rarely exercised parsers, attack surface for no photo.
RASTER_FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF") if f in Image.OPEN)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # Pillow's; others 4
_DECODER_COPY = {"TIFF": 2.0, "WEBP": 2.0, "AVIF": 2.0}  # their codecs decode into a buffer of their own first


def upright_rgb(image: Image.Image, matte: tuple[int, int, int] = WHITE) -> Image.Image:
    """An opened image as the model sees it: EXIF orientation applied, colour profile converted to sRGB, 8-bit RGB
    with transparency over white (`matte`). What `load_image` returns; datasets holding PIL images use it directly."""
    return normalise(image, matte=matte)


def _special(path: Path) -> str | None:
    """Why `path` is no file to read (a dangling link, a link loop, a folder, a FIFO, a device...), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if path.is_symlink() else "file not found"
    except PermissionError:
        return "cannot read it (permission denied)"
    except OSError as err:
        return "symbolic link loop" if err.errno == 40 else f"cannot read it ({err.strerror or err})"  # 40: ELOOP
    if stat.S_ISDIR(mode):
        return "is a directory, not an image"
    if not stat.S_ISREG(mode):  # it would block (FIFO, socket) or never end (/dev/zero)
        what = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"not a regular file ({what})"
    return None


def load_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """Open `path` as an upright RGB image, or raise ImageLoadError naming the file and the problem."""
    path = _readable(path)
    return _decode(path, str(path), max_pixels, max_aspect)


def _readable(path: str | os.PathLike) -> Path:
    """`path` if it is a non-empty regular file, else the ImageLoadError that says what it is."""
    path = Path(path)
    problem = _special(path)
    if problem:
        raise ImageLoadError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    return path


def decode_image(
    data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """`load_image` for bytes in memory (an upload): nothing is written to disk."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, max_aspect)


def load_mask(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """`load_image` for a mask (white = edit): an upright greyscale ("L") picture, transparency counting as black."""
    path = _readable(path)
    return _decode(path, str(path), max_pixels, max_aspect, matte=BLACK).convert("L")


def decode_mask(
    data: bytes, name: str = "mask", max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """`load_mask` for bytes in memory (an upload)."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, max_aspect, matte=BLACK).convert("L")


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the photo at `path` as `load_image` returns it (EXIF rotation applied), from its header
    alone: what a mask is checked against before any model loads. Raises `load_image`'s ImageLoadError."""
    path = _readable(path)
    with _opened(path, str(path)) as image:
        width, height = image.size
        return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


def decode_reduced(data: bytes, name: str, reduce_to: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[Image.Image, tuple[int, int]]:  # fmt: skip
    """(image, the full upright size): `decode_image`, no larger than a model working at `reduce_to` pixels needs
    (the longer side stays >= `reduce_to`). JPEG is scaled while decoding (the codec's 1/2 to 1/8 IDCT), other
    formats are box-reduced in bands right after decoding, and colour conversion runs on the reduced image."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    size: list[tuple[int, int]] = []
    return _decode(io.BytesIO(data), name, max_pixels, max_aspect, reduce_to, size), size[0]


def decode_cost(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                max_aspect: float = DEFAULT_MAX_ASPECT, reduce_to: int | None = None) -> int:  # fmt: skip
    """Bytes that decoding `data` allocates at its peak, from the header alone (no pixel is decoded). Raises the
    ImageLoadError decoding would raise from the header (not an image, a refused format, a bomb, a strip)."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    with _opened(io.BytesIO(data), name) as image:
        width, height = image.size
        check_size(name, width, height, max_pixels, max_aspect)
        if reduce_to and image.format == "JPEG":
            scale = max(width, height) // reduce_to
            scale = next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)
            width, height = -(-width // scale), -(-height // scale)
        pixels = width * height * _BYTES_PER_PIXEL.get(image.mode, 4)
        return int(pixels * _DECODER_COPY.get(image.format or "", 1.0))


def check_size(name: str, width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT) -> None:  # fmt: skip
    """Refuse from the header what would cost more than it is worth: a bomb, or a strip padded to a huge square."""
    if width < 1 or height < 1:
        raise ImageLoadError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale it first"
        )
    long, short = max(width, height), min(width, height)
    if long > max_aspect * short:
        raise ImageLoadError(
            f"{name}: {width}x{height} pixels is a strip (aspect ratio {long / short:.0f}:1, the limit is "
            f"{max_aspect:g}:1): it would be padded to a {long}x{long} square; crop it first"
        )


def _sniff(source: Path | io.BytesIO) -> str | None:
    """The format the content's first bytes announce (any format Pillow knows, or HEIF / PDF); for messages only."""
    try:
        if isinstance(source, Path):
            with source.open("rb") as f:
                head = f.read(16)
        else:
            head = source.getvalue()[:16]
    except OSError:
        return None
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"):
        return "HEIF"
    if head.startswith(b"%PDF"):
        return "PDF"
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(head.ljust(16, b"\0")) is True:
                return fmt
        except Exception:
            continue
    return None


def _load_error(source: Path | io.BytesIO, name: str, err: Exception) -> ImageLoadError:
    if isinstance(err, UnidentifiedImageError):
        fmt = _sniff(source)
        if fmt == "HEIF":
            return ImageLoadError(f"{name}: HEIC/HEIF photo, which this install cannot read; export it as JPEG")
        if fmt in RASTER_FORMATS:
            return ImageLoadError(f"{name}: corrupt or truncated {fmt} image")
        if fmt is not None:
            return ImageLoadError(f"{name}: {fmt} files are not accepted; only {', '.join(RASTER_FORMATS)} images")
        return ImageLoadError(f"{name}: not an image (unrecognised or corrupt content)")
    if isinstance(err, PermissionError):
        return ImageLoadError(f"{name}: cannot read it (permission denied)")
    if isinstance(err, Image.DecompressionBombError):
        return ImageLoadError(f"{name}: refused as a decompression bomb ({err})")
    if isinstance(err, MemoryError):
        return ImageLoadError(f"{name}: not enough memory to decode it; downscale it first")
    if isinstance(err, (OSError, SyntaxError, ValueError, EOFError)):
        # PIL reports truncated and damaged files as OSError ("image file is truncated", "broken data stream")
        return ImageLoadError(f"{name}: corrupt or truncated image ({err})")
    # decoders meet hostile bytes with other types too; never let one escape raw
    return ImageLoadError(f"{name}: cannot decode it ({type(err).__name__}: {err})")


@contextmanager
def _opened(source: Path | io.BytesIO, name: str) -> Iterator[Image.Image]:
    """`Image.open` restricted to RASTER_FORMATS; any failure inside becomes an ImageLoadError naming `name`."""
    with warnings.catch_warnings():
        # our own max_pixels check names the size; PIL still raises its error beyond 2x its limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # "Corrupt EXIF data" noise
        try:
            with Image.open(source, formats=RASTER_FORMATS) as image:
                yield image
        except ImageLoadError:
            raise
        except Exception as err:
            raise _load_error(source, name, err) from None


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
            reduce_to: int | None = None, size_out: list | None = None,
            matte: tuple[int, int, int] = WHITE) -> Image.Image:  # fmt: skip
    with _opened(source, name) as image:
        width, height = image.size
        check_size(name, width, height, max_pixels, max_aspect)
        image.seek(0)  # animations: the first frame
        if reduce_to and image.format == "JPEG" and max(width, height) >= 2 * reduce_to:
            side = max(width, height)  # the codec decodes at 1/2, 1/4 or 1/8 scale, keeping the size >= asked
            image.draft(None, (max(1, width * reduce_to // side), max(1, height * reduce_to // side)))
        image.load()
        if size_out is not None:
            size_out.append((height, width) if orientation(image) in (5, 6, 7, 8) else (width, height))
        return normalise(image, reduce_to, matte)


@dataclass(frozen=True)
class Restore:
    """How to undo preprocessing: the input size, its place in the padded square in input pixels (`left`, `top`,
    `side`), and the exact box it was resized into in the model's input (`box`, of a `resolution` square)."""

    width: int
    height: int
    left: int
    top: int
    side: int
    box: tuple[int, int, int, int] | None = None
    resolution: int | None = None


PADDINGS = tuple(Padding)


def preprocess(image: Image.Image, resolution: int, padding: str = Padding.BLACK) -> tuple[np.ndarray, Restore]:
    """RGB PIL image -> [1,3,R,R] float32 NumPy in [-1,1] (every runtime's input; torch takes it without a copy via
    torch.from_numpy): bilinear-resized so its longer side is R, centred on an R x R square.
    The layout of padding to a centred square and resizing, without ever building the padded square at the
    input's resolution (a 40000x1 strip would make a 40000x40000 one).

    `padding` fills the rest of the square: "black" (zeros: the published engine's preprocessing, for published
    weights) or "reflect" (the picture mirrored at its edges, so the model sees no artificial dark edge and returns
    none: what the bundled model is trained with)."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; use one of {[p.value for p in PADDINGS]}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    inner = (max(1, round(width * resolution / side)), max(1, round(height * resolution / side)))
    x0, y0 = (resolution - inner[0]) // 2, (resolution - inner[1]) // 2
    if inner != (width, height):
        image = image.resize(inner, Image.Resampling.BILINEAR)
    array = np.asarray(image)
    if inner != (resolution, resolution):
        if padding == Padding.REFLECT:
            pad = ((y0, resolution - inner[1] - y0), (x0, resolution - inner[0] - x0), (0, 0))
            array = np.pad(array, pad, mode="reflect")
        else:
            square = Image.new("RGB", (resolution, resolution), (0, 0, 0))
            square.paste(image, (x0, y0))
            array = np.asarray(square)
    pixels = np.ascontiguousarray(array.astype(np.float32).transpose(2, 0, 1)) / np.float32(255) * 2 - 1
    box = (x0, y0, x0 + inner[0], y0 + inner[1])
    return pixels[None], Restore(width, height, left, top, side, box, resolution)


def postprocess(pixels: Any, restore: Restore | None, size: tuple[int, int] | None = None) -> Image.Image:
    """[1,3,R,R] in [-1,1] (a NumPy array or a torch tensor) -> PIL image; with `restore`, crop the padding and
    resize to the input's size (or to `size`: the box's own size gives the edit at the model's resolution, for
    `upsample`)."""
    array = np.clip(to_numpy(pixels[0]) * np.float32(0.5) + np.float32(0.5), 0, 1) * np.float32(255)
    image = Image.fromarray(np.round(array).astype(np.uint8).transpose(1, 2, 0))
    if restore is None:
        return image
    size = size or (restore.width, restore.height)
    if restore.box is not None and restore.resolution == image.width:
        # exactly the pixels the photo was resized into: cropped first, so no padding bleeds into its edges
        crop = image.crop(restore.box)
        return crop if crop.size == size else crop.resize(size, Image.Resampling.BILINEAR)
    if restore.box is not None and restore.resolution:
        box = tuple(v * image.width / restore.resolution for v in restore.box)
    else:  # a Restore made by hand, without the box: the padded square's geometry
        scale = image.width / restore.side
        box = (
            restore.left * scale,
            restore.top * scale,
            (restore.left + restore.width) * scale,
            (restore.top + restore.height) * scale,
        )
    return image.resize(size, Image.Resampling.BILINEAR, box=box)


def save_image_atomic(
    image: Image.Image, path: str | os.PathLike, quality: int = 95, text: dict[str, str] | None = None
) -> Path:
    """Write `image` to `path` (format from the extension) via a temp file + rename: never a partial file. The temp
    file is named after this process, so what a killed writer leaves is removed by the next (`remove_stale_temps`).
    `text`: PNG text chunks (e.g. the settings that made the image), ignored for other formats."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use one of {sorted(SAVE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as (fd, _), os.fdopen(fd, "wb") as f:
        options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        if text and fmt == "PNG":
            from PIL.PngImagePlugin import PngInfo

            options["pnginfo"] = PngInfo()
            for key, value in text.items():
                options["pnginfo"].add_itxt(key, str(value))  # iTXt: UTF-8, any prompt
        image.save(f, format=fmt, **options)
        f.flush()
        os.fsync(f.fileno())
    return path


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files killed writers left in `folder` (see `sanaedit.core.tempfiles`); never raises."""
    return remove_stale(Path(folder))
