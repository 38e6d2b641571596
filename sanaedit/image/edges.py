"""Edges of a photo as a control image (`--control-image edges`): OpenCV's Canny detector, white lines on black,
the picture diffusers' Canny ControlNets take.

The edges are found at the photo's own resolution, then the edge picture goes through the pipeline's preprocessing
like any control image (resized to the model's resolution, padded to its square): lines finer than the model's
resolution survive as grey, so the control carries what the model's view of the photo has lost (where the
full-resolution lines are). Training computes them the same way from each stored picture. OpenCV comes with the
`[control]` extra (and `[train]`); without it, a one-line MissingExtra says what to install.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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


def edge_picture(image: Image.Image) -> Image.Image:
    """A picture's edges at its own resolution, as a picture (the control image `edges` stands for)."""
    return Image.fromarray(canny_edges(np.asarray(image.convert("RGB"))))
