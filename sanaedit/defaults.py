"""What runs when the user names no model: the bundled comic model, else a tiny random one (said loudly)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODEL = ASSETS / "comic-model"
SAMPLE_PHOTO = ASSETS / "sample.jpg"


def load_pipeline(model: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The pipeline for `model` (a model folder); with None, the bundled model or a tiny random stand-in."""
    from .pipeline import SanaEditPipeline

    if model is not None:
        return SanaEditPipeline.from_pretrained(model, device=device, dtype=dtype)
    if (BUNDLED_MODEL / "model_index.json").is_file():
        return SanaEditPipeline.from_pretrained(BUNDLED_MODEL, device=device, dtype=dtype)
    from .testing import build_tiny_pipeline

    print(
        "note: no trained model is bundled in this install and no --model was given: using a tiny RANDOM model, "
        "so the output is noise, not a comic. Pass --model DIR for real weights.",
        file=sys.stderr,
    )
    return build_tiny_pipeline().to(device=device, dtype=dtype)
