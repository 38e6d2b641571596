"""A deterministic comic filter: edge-preserving smoothing + colour quantisation + ink outlines.

It makes the training targets of the bundled comic model (and is the reference its outputs are scored against).
Same input, same output, bit for bit: no random state anywhere (no k-means), only fixed OpenCV, scikit-image and NumPy
operations.
Kernel sizes follow the image size, so a photo and its downscaled copy get the same look.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from skimage.filters import apply_hysteresis_threshold
from skimage.measure import label, regionprops_table


@dataclass(frozen=True)
class ComicStyle:
    smooth_passes: int = 3  # bilateral passes: flattens texture, keeps edges
    lightness_levels: int = 6  # flat shading bands
    chroma_step: float = 12.0  # Lab a/b quantisation step (colour families)
    saturation: float = 1.3  # comic colours are a little louder than the photo's
    ink_threshold: float = 9.0  # how much darker than its neighbourhood a pixel must be to be ink (grey levels)
    ink_strong: float = 1.5  # hysteresis: ink is kept only where it touches a pixel this many times darker
    ink_min_length: float = 1 / 25  # ink blobs shorter than this fraction of the short side are dropped (specks)
    ink_dark: int = 20  # the ink's grey value


def odd_size(x: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(x)))
    return k if k % 2 else k + 1


def _smooth(rgb: np.ndarray, style: ComicStyle) -> np.ndarray:
    side = min(rgb.shape[:2])
    diameter = odd_size(side / 40, 5)
    out = rgb
    for _ in range(style.smooth_passes):
        out = cv2.bilateralFilter(out, diameter, sigmaColor=40, sigmaSpace=diameter)
    return out


def _quantise(rgb: np.ndarray, style: ComicStyle) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # L in [0,100], a/b about [-128,127]
    band = 100.0 / style.lightness_levels
    lab[..., 0] = np.clip((np.floor(lab[..., 0] / band) + 0.5) * band, 0, 100)
    ab = lab[..., 1:] * style.saturation
    lab[..., 1:] = np.round(ab / style.chroma_step) * style.chroma_step
    out = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def ink_mask(rgb: np.ndarray, style: ComicStyle = ComicStyle()) -> np.ndarray:
    """Boolean mask of the ink outlines: pixels darker than their neighbourhood's mean (the classic cartoon
    adaptive threshold of a median-blurred grey), kept by hysteresis where they join clearly darker ink, and only in
    blobs long enough to read as lines: isolated specks on smooth areas and dots in fur are dropped."""
    side = min(rgb.shape[:2])
    grey = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), odd_size(side / 60, 3)).astype(np.float32)
    block = odd_size(side / 25, 5)
    darkness = cv2.blur(grey, (block, block), borderType=cv2.BORDER_REPLICATE) - grey
    ink = apply_hysteresis_threshold(darkness, style.ink_threshold, style.ink_strong * style.ink_threshold)
    blobs = label(ink, connectivity=2)
    lines = regionprops_table(blobs, properties=("label", "axis_major_length"))
    return np.isin(blobs, lines["label"][lines["axis_major_length"] >= style.ink_min_length * side])


def comic_array(rgb: np.ndarray, style: ComicStyle = ComicStyle()) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> comic-style uint8 RGB of the same size."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"comic filter needs a uint8 RGB array [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"image too small for the comic filter: {rgb.shape[1]}x{rgb.shape[0]}")
    rgb = np.ascontiguousarray(rgb)
    flat = _quantise(_smooth(rgb, style), style)
    flat[ink_mask(rgb, style)] = style.ink_dark
    return flat


def comic(image: Image.Image, style: ComicStyle = ComicStyle()) -> Image.Image:
    """PIL image -> comic-style PIL RGB image of the same size."""
    return Image.fromarray(comic_array(np.asarray(image.convert("RGB")), style))
