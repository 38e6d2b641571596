"""Edges of a photo as a control image (`--control-image edges`): OpenCV's Canny detector, white lines on black,
the picture diffusers' Canny ControlNets take.

The edges are found on the photo as the model sees it (the pipeline's preprocessing: the model's resolution, the
padded square), so training and every edit compute them on the same pixels, and a line is one pixel at the
resolution the ControlNet reads. OpenCV comes with the `[control]` extra (and `[train]`); without it, a one-line
MissingExtra says what to install.
"""

from __future__ import annotations

import numpy as np

from sanaedit.core.extras import EXTRA_OF, install_hint
from sanaedit.errors import MissingExtra

# Canny's hysteresis thresholds on 8-bit luminance (diffusers' Canny ControlNet examples use 100 / 200 too)
LOW, HIGH = 100, 200


def canny_edges(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> its edges as uint8 RGB [H, W, 3]: 255 on an edge, 0 elsewhere."""
    try:
        import cv2
    except ImportError as err:
        hint = install_hint(EXTRA_OF["cv2"])
        raise MissingExtra(f"edges as the control image need OpenCV, which is not installed: {hint}") from err
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    return np.repeat(cv2.Canny(grey, LOW, HIGH)[..., None], 3, axis=2)


def edge_pixels(pixels: np.ndarray) -> np.ndarray:
    """The model's input pixels [B, 3, R, R] in [-1, 1] -> their edge pictures, as model input pixels too."""
    pixels = np.asarray(pixels, np.float32)
    rgb = np.clip(np.round((pixels + 1) * np.float32(127.5)), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    edges = np.stack([canny_edges(picture) for picture in rgb]).transpose(0, 3, 1, 2)
    return edges.astype(np.float32) / np.float32(127.5) - 1
