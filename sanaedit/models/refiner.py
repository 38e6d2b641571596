"""A learned full-resolution refiner: the last step of bringing an edit back to the photo's own size.

The editor works at a few hundred pixels; `upsample.py`'s guided filter brings its output to the photo's size with
the photo's edges. What no upsampler can restore is detail the model never had: thin ink lines one photo pixel wide,
flat bands whose borders follow the full-resolution photo. This small CNN sees both the full-resolution photo and
the guided edit and predicts a correction to the edit (the issue's "small learned refiner trained with the model",
in the spirit of HDRNet's full-resolution stage). It is trained after the editor, on the editor's own outputs
(the `refiner` training stage), so it learns to fix what this editor gets wrong at full resolution.

Layout: the photo and the edit (in [-1, 1]) cut into `unshuffle` x `unshuffle` pixel blocks (pixel unshuffle, as
ESPCN-style super-resolution nets do, so the convs run on f^2 fewer positions), a 3x3 conv to `width`, residual 3x3
convs with the given dilations, SiLU, and a zero-initialised 3x3 conv to an RGB correction per pixel of each block
(pixel shuffle), added to the edit: a fresh refiner returns the guided edit unchanged.

Stored as one safetensors file (`refiner.safetensors`, its config in the metadata), read without diffusers; an
export also writes it as a graph (`refiner.onnx` / `refiner.mnn`, `export/folder.py`), which the exported runtime
runs without torch (`runtime/refiner_graph.py`). Either way it runs in fp32 on the CPU, in overlapping tiles
(`refine_tiles.py`, shared), so a 12 MP photo needs a few hundred MB at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sanaedit.models.refine_tiles import REFINER_FILE, TILE, refine_in_tiles


class Refiner(nn.Module):
    def __init__(self, width: int = 24, dilations: tuple[int, ...] = (1, 2, 4, 8, 1), unshuffle: int = 1):
        super().__init__()
        self.config = {"width": int(width), "dilations": [int(d) for d in dilations], "unshuffle": int(unshuffle)}
        f = self.factor = int(unshuffle)  # > 1: the convs run on f x f pixel blocks (f^2 fewer positions, wider view)
        self.inp = nn.Conv2d(6 * f * f, width, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in dilations)
        self.out = nn.Conv2d(width, 3 * f * f, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as the identity on the edit
        nn.init.zeros_(self.out.bias)

    @property
    def margin(self) -> int:
        """Pixels of context each side of an output pixel (the receptive field's radius), a multiple of the factor."""
        return self.factor * (3 + sum(self.config["dilations"]))

    def forward(self, photo: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        """photo, edit: [B, 3, H, W] in [0, 1], H and W multiples of the unshuffle factor -> the refined edit (not
        clamped: training sees the raw output)."""
        h = F.silu(self.inp(F.pixel_unshuffle(torch.cat([photo, edit], 1) * 2 - 1, self.factor)))
        for conv in self.body:
            h = h + F.silu(conv(h))
        return edit + F.pixel_shuffle(self.out(h), self.factor)

    def refine(self, photo: Image.Image, edit: Image.Image, tile: int = TILE) -> Image.Image:
        """The edit (already at the photo's size) refined, tile by tile with `margin` pixels of overlap, so the
        result equals one pass over the whole picture (`refine_tiles.refine_in_tiles`, which the exported graph's
        runner shares)."""
        return refine_in_tiles(self.forward_numpy, photo, edit, self.factor, self.margin, tile)

    @torch.no_grad()
    def forward_numpy(self, photo: np.ndarray, edit: np.ndarray) -> np.ndarray:
        """`forward` on float32 arrays [1, 3, h, w] in [0, 1] -> the refined tile as an array."""
        return self(torch.from_numpy(photo), torch.from_numpy(edit)).numpy()


def save_refiner(refiner: Refiner, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / REFINER_FILE
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in refiner.state_dict().items()}
    save_file(tensors, path, metadata={"config": json.dumps(refiner.config)})
    return path


def load_refiner(folder: Path) -> Refiner | None:
    """The folder's refiner (fp32, CPU, eval mode), or None when it has none. A broken file raises the library's
    error (formats/refiner.folder_refiner names the file); weights that are not finite raise ValueError."""
    from safetensors import safe_open

    path = Path(folder) / REFINER_FILE
    if not path.is_file():
        return None
    with safe_open(path, "pt") as f:
        config = json.loads((f.metadata() or {})["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    refiner = Refiner(int(config["width"]), tuple(int(d) for d in config["dilations"]), int(config.get("unshuffle", 1)))
    refiner.load_state_dict(tensors)
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise ValueError("its weights hold NaN or inf")
    return refiner.float().eval().requires_grad_(False)
