"""Streamed 8-bit loading: same weights as quantizing the loaded fp32 model, nothing left on meta, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sanaedit.backends.torch_loading import load_model
from sanaedit.models.transformer import SanaEditTransformer2DModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sanaedit.tools.random_model import build_tiny_pipeline

    return build_tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("lowmem") / "model")


def _args():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 4, 2, 2, generator=g),
        torch.randn(2, 8, 24, generator=g),
        torch.tensor([700.0, 700.0]),
        torch.ones(2, 8),
        torch.randn(2, 4, 2, 2, generator=g),
    )


def test_missing_weight_is_named(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "transformer"
    shutil.copytree(model_dir / "transformer", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["proj_out.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match="proj_out.weight"):
        load_model(SanaEditTransformer2DModel, broken, torch.float32)


@pytest.mark.parametrize("component", ["transformer", "vae"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_load_equals_diffusers(model_dir, component, dtype):
    """The pipeline's streamed loader gives bit for bit what diffusers' from_pretrained gives (config and weights)."""
    from diffusers import AutoencoderDC

    cls = SanaEditTransformer2DModel if component == "transformer" else AutoencoderDC
    ours = load_model(cls, model_dir / component, dtype)
    theirs = cls.from_pretrained(model_dir / component, torch_dtype=dtype)
    assert dict(ours.config) == dict(theirs.config)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_streamed_load_names_what_does_not_fit(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "transformer"
    shutil.copytree(model_dir / "transformer", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(ValueError, match="extra.weight"):
        load_model(SanaEditTransformer2DModel, broken)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_model(SanaEditTransformer2DModel, broken)
