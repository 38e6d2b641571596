"""A deterministic comic filter: edge-preserving smoothing + colour quantisation + ink outlines.

It makes the training targets of the bundled comic model (and is the reference its outputs are scored against).
Same input, same output, bit for bit: no random state anywhere (no k-means), only fixed OpenCV/NumPy operations.
Kernel sizes follow the image size, so a photo and its downscaled copy get the same look.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ComicStyle:
    smooth_passes: int = 3  # bilateral passes: flattens texture, keeps edges
    lightness_levels: int = 6  # flat shading bands
    chroma_step: float = 12.0  # Lab a/b quantisation step (colour families)
    saturation: float = 1.3  # comic colours are a little louder than the photo's
    ink_threshold: float = 9.0  # adaptive-threshold offset: higher = fewer, stronger lines
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
    """Boolean mask of the ink outlines (classic cartoon lines: adaptive threshold of a median-blurred grey)."""
    side = min(rgb.shape[:2])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.medianBlur(grey, odd_size(side / 60, 3))
    block = odd_size(side / 25, 5)
    lines = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, style.ink_threshold)
    return lines == 0


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
