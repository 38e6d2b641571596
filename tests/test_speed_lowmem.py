"""Streamed 8-bit loading: same weights as quantizing the loaded fp32 model, nothing left on meta, clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sanaedit.models.transformer import SanaEditTransformer2DModel
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.quant import QuantizedConv2d, QuantizedLinear, quantize_model
from sanaedit.speed import text_kv_cache_enabled
from sanaedit.speed.lowmem import load_low_memory_pipeline, load_quantized_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sanaedit.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("lowmem") / "model")


def _args():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 4, 2, 2, generator=g),
        torch.randn(2, 8, 24, generator=g),
        torch.tensor([700.0, 700.0]),
        torch.ones(2, 8),
        torch.randn(2, 4, 2, 2, generator=g),
    )


def test_streamed_equals_quantize_after_load(model_dir):
    full = SanaEditTransformer2DModel.from_pretrained(model_dir / "transformer").eval()
    reference = copy.deepcopy(full)
    quantize_model(reference, 8, min_params=4096)
    streamed = load_quantized_model(SanaEditTransformer2DModel, model_dir / "transformer", 8, min_params=4096)
    assert not any(p.device.type == "meta" for p in streamed.parameters())
    kinds = {type(m) for m in streamed.modules()}
    assert QuantizedLinear in kinds
    with torch.no_grad():
        torch.testing.assert_close(streamed(*_args()), reference(*_args()), rtol=0, atol=0)
        ref = full(*_args())
        assert float((streamed(*_args()) - ref).norm() / ref.norm()) < 0.01


def test_vae_convs_quantized(model_dir):
    from diffusers import AutoencoderDC

    vae = load_quantized_model(AutoencoderDC, model_dir / "vae", 8, min_params=0)
    assert any(isinstance(m, QuantizedConv2d) for m in vae.modules())
    assert not any(type(m) is torch.nn.Conv2d for m in vae.modules())


def test_missing_weight_is_named(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "transformer"
    shutil.copytree(model_dir / "transformer", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["proj_out.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match="proj_out.weight"):
        load_quantized_model(SanaEditTransformer2DModel, broken, 8, min_params=0)


def test_low_memory_pipeline_close_to_fp32(model_dir):
    image = Image.new("RGB", (64, 48), (30, 160, 220))
    ref = SanaEditPipeline.from_pretrained(model_dir)(image, num_inference_steps=3, generator=torch.manual_seed(0))
    pipe = load_low_memory_pipeline(model_dir)
    assert text_kv_cache_enabled(pipe.transformer) and not pipe.text_encoder_loaded
    out = pipe(image, num_inference_steps=3, generator=torch.manual_seed(0))
    assert out.size == ref.size
    mse = np.mean((np.asarray(out, dtype=float) - np.asarray(ref, dtype=float)) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 30
