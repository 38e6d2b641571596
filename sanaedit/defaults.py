"""What runs when the user names no model: the bundled comic model, else a tiny random one (said loudly)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODEL = ASSETS / "comic-model"
SAMPLE_PHOTO = ASSETS / "sample.jpg"


def load_pipeline(
    model: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
):
    """The pipeline for `model`: a model folder (PyTorch) or an exported folder (the runtime its manifest names,
    or `backend`); with None, the bundled model or a tiny random stand-in. PyTorch pipelines get the text K/V
    cache (exact: the text's cross-attention keys/values are computed once per conditioning)."""
    if model is not None:
        from .runtime import is_export
        from .runtime import load_pipeline as load_runtime_pipeline

        if is_export(model) or backend not in (None, "torch"):
            if device != "cpu" or dtype != torch.float32:
                raise ValueError("exported graphs run on the CPU in float32: drop --device/--dtype")
            return load_runtime_pipeline(model, backend=backend)
        return _torch_pipeline(model, device, dtype)
    if backend not in (None, "torch"):
        raise ValueError(f"backend {backend!r} needs an exported folder: pass --model EXPORTED_DIR")
    if (BUNDLED_MODEL / "model_index.json").is_file():
        return _torch_pipeline(BUNDLED_MODEL, device, dtype)
    from .testing import build_tiny_pipeline

    print(
        "note: no trained model is bundled in this install and no --model was given: using a tiny RANDOM model, "
        "so the output is noise, not a comic. Pass --model DIR for real weights.",
        file=sys.stderr,
    )
    return build_tiny_pipeline().to(device=device, dtype=dtype)


def _torch_pipeline(folder: str | Path, device: str, dtype: torch.dtype):
    from .pipeline import SanaEditPipeline
    from .speed import enable_text_kv_cache

    pipe = SanaEditPipeline.from_pretrained(folder, device=device, dtype=dtype)
    enable_text_kv_cache(pipe.transformer)
    return pipe
