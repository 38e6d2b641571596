"""The ControlNet (models/controlnet.py): diffusers' SanaControlNetModel built from an editing DiT, its residuals
entering the DiT as diffusers' `controlnet_block_samples`, its folders diffusers' own."""

from __future__ import annotations

import pytest
import torch
from diffusers import SanaControlNetModel, SanaTransformer2DModel

from sanaedit.core.flow import TIMESTEP_SCALE
from sanaedit.models.controlnet import TorchControl, check_fits, control_input, controlnet_from_transformer
from sanaedit.tools.random_model import build_tiny_pipeline
from tests.conftest import trained_looking


def dit_inputs(pipe, batch: int = 2, seed: int = 0):
    t = pipe.transformer
    g = torch.Generator().manual_seed(seed)
    size, c = pipe.config.resolution // pipe.vae_scale, t.config.out_channels
    return dict(
        sample=torch.randn(batch, c, size, size, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, t.config.caption_channels, generator=g),
        timestep=torch.tensor([700.0, 250.0][:batch]),
        mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]][:batch], dtype=torch.float32),
        ref=torch.randn(batch, c, size, size, generator=g),
        control=torch.randn(batch, c, size, size, generator=g),
    )


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


def test_a_fresh_controlnet_copies_the_dit_and_changes_nothing_bit_for_bit(pipe):
    dit = pipe.transformer
    controlnet = controlnet_from_transformer(dit, num_layers=1)
    assert torch.equal(controlnet.patch_embed.proj.weight, dit.patch_embed.proj.weight)
    block, main = controlnet.transformer_blocks[0].state_dict(), dit.transformer_blocks[0].state_dict()
    assert all(torch.equal(block[k], main[k]) for k in main)
    assert all(p.abs().sum() == 0 for n, p in controlnet.named_parameters() if "controlnet_blocks" in n)
    assert controlnet.input_block.weight.abs().sum() == 0
    x = dit_inputs(pipe)
    with torch.no_grad():
        plain = dit(x["sample"], x["encoder_hidden_states"], x["timestep"], x["mask"], x["ref"])
        steered = TorchControl(controlnet)(dit, *x.values(), 1.0)
    assert torch.equal(plain, steered)


def test_residuals_enter_the_dit_as_diffusers_loop_puts_them(pipe, tmp_path):
    """Our DiT + ControlNet against diffusers' own classes read from the same folders, wired as diffusers'
    SanaControlNetPipeline wires them, the control latent in the reference channels (models/controlnet.py)."""
    controlnet = trained_looking(controlnet_from_transformer(pipe.transformer, num_layers=1))
    pipe.transformer.save_pretrained(tmp_path / "transformer")
    controlnet.save_pretrained(tmp_path / "controlnet")
    theirs_dit = SanaTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    theirs_cn = SanaControlNetModel.from_pretrained(tmp_path / "controlnet").eval()
    x = dit_inputs(pipe)
    scale = 0.7
    with torch.no_grad():
        hidden = torch.cat([x["sample"], x["ref"]], dim=1)
        cond = torch.cat([torch.zeros_like(x["control"]), x["control"]], dim=1)
        residuals = theirs_cn(
            hidden, x["encoder_hidden_states"], x["timestep"], controlnet_cond=cond, conditioning_scale=scale,
            encoder_attention_mask=x["mask"],
        ).controlnet_block_samples  # fmt: skip
        want = theirs_dit(
            hidden, x["encoder_hidden_states"], x["timestep"], encoder_attention_mask=x["mask"],
            controlnet_block_samples=residuals,
        ).sample  # fmt: skip
        plain = theirs_dit(hidden, x["encoder_hidden_states"], x["timestep"], encoder_attention_mask=x["mask"]).sample
        got = TorchControl(controlnet)(pipe.transformer, *x.values(), scale)
    assert (want - plain).abs().max() > 1e-2  # the ControlNet does something
    assert (got - want).abs().max() <= 1e-4


def test_the_flow_runs_the_controlnet_only_with_a_control_latent(pipe):
    controlnet = trained_looking(controlnet_from_transformer(pipe.transformer, num_layers=1))
    flow = pipe.flow
    x = dit_inputs(pipe, batch=1)
    args = (x["sample"], 0.5, x["encoder_hidden_states"], x["mask"], x["ref"])
    with torch.no_grad():
        plain = flow.velocity(*args)
        with pytest.raises(ValueError, match="no ControlNet"):
            flow.velocity(*args, control=x["control"])
        flow.controlnet = TorchControl(controlnet)
        try:
            assert torch.equal(flow.velocity(*args), plain)
            assert torch.equal(flow.velocity(*args, control=x["control"], control_scale=0.0), plain)
            steered = flow.velocity(*args, control=x["control"])
        finally:
            flow.controlnet = None
    timestep = torch.full((1,), 0.5 * TIMESTEP_SCALE)
    inputs = (x["sample"], x["encoder_hidden_states"], timestep, x["mask"], x["ref"], x["control"], 1.0)
    want = TorchControl(controlnet)(pipe.transformer, *inputs)
    assert torch.equal(steered, want) and not torch.equal(steered, plain)


def test_the_control_latent_fills_the_reference_channels():
    dit = build_tiny_pipeline().transformer
    controlnet = controlnet_from_transformer(dit, num_layers=1)
    control = torch.randn(1, 4, 8, 8)
    cond = control_input(controlnet, control)
    assert cond.shape == (1, 8, 8, 8)
    assert torch.equal(cond[:, 4:], control) and cond[:, :4].abs().sum() == 0


def test_a_controlnet_that_does_not_fit_is_refused_by_name(pipe):
    dit = pipe.transformer
    with pytest.raises(ValueError, match="1 to 2 of this DiT's blocks"):
        controlnet_from_transformer(dit, num_layers=3)
    too_deep = controlnet_from_transformer(dit, num_layers=2)  # residual 2 would land after a block it lacks
    with pytest.raises(ValueError, match="takes at most 1"):
        check_fits(too_deep, dit)
    config = {**dict(controlnet_from_transformer(dit, num_layers=1).config), "caption_channels": 7}
    with pytest.raises(ValueError, match="caption_channels 7"):
        check_fits(SanaControlNetModel.from_config(config), dit)
    with pytest.raises(ValueError, match="distilled student"):
        controlnet_from_transformer(dit.with_guidance_embedding(), num_layers=1)
