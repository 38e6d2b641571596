"""The learned refiner's tiling, without torch: a full-resolution photo and edit cut into overlapping tiles, each
refined by a `forward` (the PyTorch module in `models/refiner.py`, or its exported graph in
`runtime/refiner_graph.py`) and cropped back to its own pixels, so the result equals one pass over the whole
picture. NumPy and PIL only: the exported runtime uses it without torch. `RefinerGraph` runs an exported refiner
graph (the runtime's, and the exporter's check of it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

REFINER_FILE = "refiner.safetensors"  # its weights in a model or exported folder (models/refiner.py)
REFINER_GRAPH = "refiner"  # its name in the manifest's "graphs", and the file's stem
REFINER_INPUTS = ["photo", "edit"]  # float32 [1, 3, H, W] in [0, 1], H and W multiples of the factor
REFINER_OUTPUTS = ["refined"]  # float32 [1, 3, H, W], not clamped
TILE = 512  # output pixels per tile side (memory: ~width x (TILE + 2 * margin)^2 floats per feature map)

# (photo_tile, edit_tile) -> refined tile: float32 [1, 3, h, w] in [0, 1], h and w multiples of the factor
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def refine_in_tiles(
    forward: Forward, photo: Image.Image, edit: Image.Image, factor: int, margin: int, tile: int = TILE
) -> Image.Image:
    """The edit (already at the photo's size) refined, tile by tile with `margin` pixels of overlap (the
    receptive field's radius, a multiple of `factor`), so the result equals one pass over the whole picture (each
    output pixel sees its full receptive field). The picture is padded by replication to whole `factor` x `factor`
    pixel blocks (cropped at the end). Only one tile at a time is in floats: the working memory is a few tiles'
    feature maps plus the uint8 pictures."""
    if photo.size != edit.size:
        raise ValueError(f"refiner: photo {photo.size} and edit {edit.size} differ in size")
    f, m = int(factor), int(margin)
    tile = max(f, tile - tile % f)  # tiles (and so their margins) start on the factor's grid
    width, height = photo.size
    pad = ((0, -height % f), (0, -width % f), (0, 0))  # to whole f x f blocks by replication; cropped at the end
    photo_a, edit_a = (np.pad(np.asarray(x.convert("RGB")), pad, mode="edge") for x in (photo, edit))
    out = np.empty((height, width, 3), np.uint8)
    rows, cols = photo_a.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            y0, x0 = max(0, y - m), max(0, x - m)
            y1, x1 = min(rows, y + tile + m), min(cols, x + tile + m)
            piece = np.asarray(forward(to_floats(photo_a[y0:y1, x0:x1]), to_floats(edit_a[y0:y1, x0:x1])))
            piece = piece[0, :, y - y0 : y - y0 + min(tile, height - y), x - x0 : x - x0 + min(tile, width - x)]
            out[y : y + piece.shape[1], x : x + piece.shape[2]] = to_uint8(piece)
    return Image.fromarray(out)


def to_floats(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> float32 [1, 3, h, w] in [0, 1] (contiguous)."""
    return np.ascontiguousarray((pixels.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None])


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [3, h, w] (refined, not clamped) -> uint8 [h, w, 3], rounded to the nearest level."""
    x = np.clip(np.asarray(x, np.float32), 0, 1).transpose(1, 2, 0)
    return (x * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


class RefinerGraph:
    """`refine(photo, edit) -> Image` (as `Refiner.refine`) over `graph(photo, edit) -> refined`, a callable on
    float32 arrays [1, 3, h, w] (an ONNX Runtime or MNN graph from `backends.load_graph`)."""

    def __init__(self, graph: Callable, factor: int, margin: int):
        if int(factor) < 1 or int(margin) < 0 or int(margin) % int(factor):
            raise ValueError(f"refiner graph: factor {factor} and margin {margin} do not fit (margin = k x factor)")
        self.graph, self.factor, self.margin = graph, int(factor), int(margin)

    def forward(self, photo: np.ndarray, edit: np.ndarray) -> np.ndarray:
        """One tile: float32 [1, 3, h, w] in [0, 1] each -> the refined tile, float32 [1, 3, h, w]."""
        return np.asarray(self.graph(photo, edit), np.float32)

    def refine(self, photo: Image.Image, edit: Image.Image, tile: int = TILE) -> Image.Image:
        """The edit (already at the photo's size) refined in overlapping tiles: equal to one pass over the picture."""
        return refine_in_tiles(self.forward, photo, edit, self.factor, self.margin, tile)
