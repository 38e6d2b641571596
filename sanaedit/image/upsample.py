"""Bring an edit made at the model's resolution back to the photo's own size, with the photo's detail.

The editor works at a few hundred pixels; photos have millions. Plain bilinear upsampling (`plain`) smears the
edit's outlines over several photo pixels. `guided` is the fast guided filter (He & Sun, "Fast Guided Filter",
2015; the idea behind HDRNet's guided upsampling): at the model's resolution it fits, in every small window, an
affine map from the photo's colour to the edit's colour (`edit ~ A @ photo + b`, ridge-regularised by `eps`), then
smooths the maps, upsamples them bilinearly and applies them to the full-resolution photo. Edges and lines that
the photo has come back at the photo's own sharpness; what the edit changed (colours, ink, flat areas) comes with
the maps. `guided-grey` guides with the photo's luminance only (cheaper, weaker on colour edges). `refine` is
`guided`, then the model folder's learned full-resolution refiner (`models/refiner.py`), trained on the editor's
own outputs.

Pure NumPy and PIL (no torch, no OpenCV): the same code runs after every runtime (PyTorch, ONNX Runtime, MNN), and
the exported runtimes import it without torch. Memory is bounded for 12 MP photos: the maps are computed at the
edit's resolution and applied in strips of rows.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sanaedit.core.choices import Upsample
from sanaedit.image.io import Restore, postprocess

logger = logging.getLogger(__name__)

METHODS = tuple(Upsample)
DEFAULT_METHOD = Upsample.GUIDED
RADIUS = 1  # window radius at the edit's resolution (a 3x3 window)
EPS = 1e-3  # ridge on the window's colour covariance, in [0, 1] units squared (flat patches keep the edit's colour)
# the bundled refiner (pixel blocks of 2) costs ~0.5 s per megapixel on 2 cores (bench/refiner_speed.py; the guided
# filter ~0.07 s): a 12 MP phone photo is refined in ~5 s; above this many pixels `refine` gives the guided edit
# alone, so a very large upload costs seconds, not a minute
REFINE_MAX_PIXELS = 12_000_000
STRIP_PIXELS = 1 << 20  # full-resolution pixels per strip (bounds the working memory: ~50 MB for a colour guide)


class PhotoRefiner(Protocol):
    """What `refine` needs: `models.refiner.Refiner` (torch) or the exported graph's `RefinerGraph` (no torch)."""

    def refine(self, photo: Image.Image, edit: Image.Image) -> Image.Image: ...


def restore_photo(
    pixels: Any,
    restore: Restore | None,
    photo: Image.Image | None,
    method: str,
    refiner: PhotoRefiner | None = None,
) -> Image.Image:
    """The model's output [1,3,R,R] in [-1, 1] (NumPy or torch) -> the edited photo at the input's own size: the
    padding cropped away, then `upsample(method)` from the model's resolution with `photo` (the full-resolution
    input) as the guide; `refine` runs `refiner` (the folder's, required) on the guided result."""
    check_method(method, refiner)
    if restore is None or photo is None or method == Upsample.PLAIN or restore.box is None:
        return postprocess(pixels, restore)
    x0, y0, x1, y1 = restore.box
    edit = postprocess(pixels, restore, size=(x1 - x0, y1 - y0))
    if method != Upsample.REFINE:
        return upsample(edit, photo, method)
    photo = photo.convert("RGB")
    guided = upsample(edit, photo, Upsample.GUIDED)
    if photo.width * photo.height > REFINE_MAX_PIXELS:
        logger.info(
            "photo is %.1f MP: over the refiner's %.0f MP budget, guided upsampling only",
            photo.width * photo.height / 1e6,
            REFINE_MAX_PIXELS / 1e6,
        )
        return guided
    return refiner.refine(photo, guided)


def check_method(method: str, refiner: PhotoRefiner | None) -> None:
    """A known method, and `refine` only with a refiner (named errors, raised before any work)."""
    if method not in METHODS:
        raise ValueError(f"unknown upsampling method {method!r}; use one of {[m.value for m in METHODS]}")
    if method == Upsample.REFINE and refiner is None:
        raise ValueError(
            "upsampling 'refine' needs the model folder's learned refiner (refiner.safetensors, made by the `refiner` "
            "training stage); this model has none: use --upsample guided"
        )


def upsample(
    edit: Image.Image,
    photo: Image.Image,
    method: str = DEFAULT_METHOD,
    radius: int = RADIUS,
    eps: float = EPS,
) -> Image.Image:
    """`edit` (the model's output for `photo`, covering the same view at a lower resolution) -> photo.size.

    `photo` is the full-resolution input (RGB). `plain` is bilinear resizing; `guided` / `guided-grey` the fast
    guided filter with the photo (colour / luminance) as the guide.
    """
    if method not in METHODS or method == Upsample.REFINE:
        raise ValueError(f"unknown upsampling method {method!r}; use one of {[m.value for m in METHODS[:3]]}")
    edit, photo = edit.convert("RGB"), photo.convert("RGB")
    if method == Upsample.PLAIN or edit.size == photo.size:
        return edit if edit.size == photo.size else edit.resize(photo.size, Image.Resampling.BILINEAR)
    if min(edit.size) < 2:
        return edit.resize(photo.size, Image.Resampling.BILINEAR)
    guide_low = photo.resize(edit.size, Image.Resampling.BILINEAR)  # what the model saw, at the edit's size
    grey = method == Upsample.GUIDED_GREY
    maps = _affine_maps(_planes(guide_low, grey), _planes(edit, False), radius, eps)  # [k+1, 3, h, w]
    return Image.fromarray(_apply(maps, photo, grey))


# The filter's pieces are hand-written NumPy (box means by running sums, batched LAPACK solves) rather than OpenCV's
# ximgproc or torch ops: numpy is what every runtime has, and this keeps the exported runtime torch- and OpenCV-free.


def _planes(image: Image.Image, grey: bool) -> np.ndarray:
    """PIL RGB -> [C, h, w] float64 in [0, 1] (C = 1 for luminance)."""
    x = (np.asarray(image, dtype=np.float64) / 255.0).transpose(2, 0, 1)
    return _luma(x) if grey else x


def _luma(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window on the last two axes, windows cut at the border (each pixel averages what exists
    around it), in float64. Separable, one plane at a time (a few planes of working memory): running sums down the
    columns, each window's sum the difference of two of them divided by its length, then the same on the transpose
    (a cut window is still a rectangle, so its mean is the mean of its columns' means)."""
    out = np.empty(x.shape)
    for index in np.ndindex(x.shape[:-2]):
        plane = x[index]
        for _ in range(2):
            n = plane.shape[0]
            sums = np.zeros((n + 1, plane.shape[1]))
            np.cumsum(plane, 0, out=sums[1:])
            lo, hi = np.maximum(np.arange(n) - radius, 0), np.minimum(np.arange(n) + radius + 1, n)
            plane = ((sums[hi] - sums[lo]) / (hi - lo)[:, None]).T
        out[index] = plane
    return out


def _affine_maps(guide: np.ndarray, edit: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Per-pixel ridge regression edit_c ~ sum_k A[k, c] guide_k + b_c over each window, the coefficients then
    averaged over windows (the guided filter). Returns float32 [K + 1, C_edit, h, w]: K rows of A, then b."""
    radius = max(1, min(radius, (min(guide.shape[1:]) - 1) // 2))
    k = guide.shape[0]
    mean_i, mean_p = _box(guide, radius), _box(edit, radius)
    # covariance of the guide's channels (K x K per pixel) and with the edit's channels (K x C per pixel)
    cov_ii = _box(guide[:, None] * guide[None], radius) - mean_i[:, None] * mean_i[None]
    cov_ip = _box(guide[:, None] * edit[None], radius) - mean_i[:, None] * mean_p[None]
    cov_ii[range(k), range(k)] += eps  # the ridge
    # [h, w, K, K] @ a = [h, w, K, C]: a stack of K x C right-hand sides (both 4-D, so NumPy >= 2 reads it as one)
    a = np.linalg.solve(cov_ii.transpose(2, 3, 0, 1), cov_ip.transpose(2, 3, 0, 1)).transpose(2, 3, 0, 1)
    del cov_ii, cov_ip  # [K, K, h, w] float64 each: not kept through the last box
    b = mean_p - (a * mean_i[:, None]).sum(0)
    return _box(np.concatenate([a, b[None]]), radius).astype(np.float32)


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (half-pixel centres) source indices and weights along one axis."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _plane(m: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """One low-resolution map plane [h', w] bilinearly interpolated to a strip's pixels [rows, W]."""
    (i0, i1, wr), (c0, c1, wc) = rows, cols
    m = m[:, c0] * (1 - wc) + m[:, c1] * wc
    return m[i0] * (1 - wr) + m[i1] * wr


def _apply(maps: np.ndarray, photo: Image.Image, grey: bool) -> np.ndarray:
    """Upsample the maps bilinearly to photo.size and apply them to the photo, a strip of rows and one map plane at
    a time (the working set is a few float planes of one strip, whatever the photo's size)."""
    width, height = photo.size
    k, c, h, _ = maps.shape
    cols = _interp_weights(width, maps.shape[-1])
    r0, r1, rw = _interp_weights(height, h)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    out = np.empty((height, width, 3), np.uint8)
    step = max(1, STRIP_PIXELS // width)
    for top in range(0, height, step):
        bottom = min(height, top + step)
        lo, hi = int(r0[top]), int(r1[bottom - 1]) + 1  # the maps' rows this strip interpolates from
        rows = (r0[top:bottom] - lo, r1[top:bottom] - lo, rw[top:bottom, None])
        strip = np.asarray(photo.crop((0, top, width, bottom)), np.float32) / 255.0  # [rows, W, 3]
        guide = [strip @ luma] if grey else [strip[..., i] for i in range(3)]
        for ch in range(c):
            result = _plane(maps[k - 1, ch, lo:hi], rows, cols)  # b
            for a in range(k - 1):
                result += _plane(maps[a, ch, lo:hi], rows, cols) * guide[a]  # A[a, ch] * guide_a
            out[top:bottom, :, ch] = np.clip(result * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
