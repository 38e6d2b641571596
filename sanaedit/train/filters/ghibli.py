"""A deterministic "Ghibli-style" filter: soft contrast, warm tones, slight linework (the published system's second
look, as its README describes it). It makes the targets of the bundled Ghibli LoRA, as `comic.py` does for the
comic model, and its outputs are scored against it. Fixed OpenCV/NumPy operations only: same input, same output.
Kernel sizes follow the image size, so a photo and its downscaled copy get the same look.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from sanaedit.train.filters.comic import odd_size


@dataclass(frozen=True)
class GhibliStyle:
    smooth_passes: int = 2  # light bilateral smoothing: painted surfaces, not flat cartoon fills
    contrast: float = 0.78  # lightness pulled towards its mid-tone (soft contrast)
    lift: float = 6.0  # shadows lifted (Lab L units)
    warmth: tuple[float, float] = (2.0, 8.0)  # added to Lab a (red) and b (yellow)
    saturation: float = 1.12
    glow: float = 0.25  # share of a blurred copy screened in (a soft, airy light)
    line_strength: float = 0.35  # how much the thin outlines darken (slight linework)


def _soft_warm(rgb: np.ndarray, style: GhibliStyle) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lab[..., 0] = np.clip(50.0 + (lab[..., 0] - 50.0) * style.contrast + style.lift, 0, 100)
    lab[..., 1] = lab[..., 1] * style.saturation + style.warmth[0]
    lab[..., 2] = lab[..., 2] * style.saturation + style.warmth[1]
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _glow(rgb: np.ndarray, style: GhibliStyle) -> np.ndarray:
    """Screen-blend a blurred copy: bright areas bloom softly, dark ones barely change."""
    side = min(rgb.shape[:2])
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(1.0, side / 60))
    screen = 1.0 - (1.0 - rgb) * (1.0 - blurred)
    return rgb * (1 - style.glow) + screen * style.glow


def line_mask(rgb: np.ndarray) -> np.ndarray:
    """Thin outlines: Canny edges of the smoothed grey image (one pixel wide, no dilation)."""
    side = min(rgb.shape[:2])
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (odd_size(side / 120, 3),) * 2, 0)
    return cv2.Canny(grey, 60, 140) > 0


def ghibli_array(rgb: np.ndarray, style: GhibliStyle = GhibliStyle()) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> Ghibli-style uint8 RGB of the same size."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"ghibli filter needs a uint8 RGB array [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"image too small for the ghibli filter: {rgb.shape[1]}x{rgb.shape[0]}")
    side = min(rgb.shape[:2])
    diameter = odd_size(side / 60, 5)
    smooth = np.ascontiguousarray(rgb)
    for _ in range(style.smooth_passes):
        smooth = cv2.bilateralFilter(smooth, diameter, sigmaColor=30, sigmaSpace=diameter)
    out = _glow(_soft_warm(smooth, style), style)
    out[line_mask(smooth)] *= 1.0 - style.line_strength
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def ghibli(image: Image.Image, style: GhibliStyle = GhibliStyle()) -> Image.Image:
    """PIL image -> Ghibli-style PIL RGB image of the same size."""
    return Image.fromarray(ghibli_array(np.asarray(image.convert("RGB")), style))
