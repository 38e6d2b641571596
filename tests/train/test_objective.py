import math

import pytest
import torch

from sanaedit.core.flow import flow_matching_loss, interpolate, sample_t
from sanaedit.core.sampling import euler_sample, shift_sigmas
from sanaedit.train.optim import build_optimizer, warmup_constant


def test_interpolation_endpoints_and_target():
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    x_t, v = interpolate(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    assert torch.allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2])
    assert torch.equal(v, noise - x0)


def test_logit_normal_with_shift_matches_formula():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t = sample_t(10_000, g1, shift=3.0)
    u = torch.sigmoid(torch.randn(10_000, generator=g2))
    assert torch.allclose(t, 3 * u / (1 + 2 * u))
    assert 0 < t.min() and t.max() < 1
    # shift 3 moves mass to high noise: median of sigmoid(N(0,1)) is 0.5 -> 0.75
    assert abs(t.median().item() - 0.75) < 0.02


def test_uniform_and_unknown():
    t = sample_t(10_000, torch.Generator().manual_seed(0), mode="uniform", shift=1.0)
    assert abs(t.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="unknown t sampling"):
        sample_t(2, mode="beta")


def test_exact_velocity_gives_zero_loss_and_sampler_inverts_it():
    """Objective and sampler share one convention: integrating the true velocity from noise reaches x0."""
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([0.3, 0.9])
    assert flow_matching_loss(lambda x_t, ts: noise - x0, x0, noise, t).item() == 0.0
    # the velocity function gets the noise level t itself (FlowModel.velocity turns it into the DiT's timestep)
    seen = {}

    def spy(x_t, ts):
        seen["t"] = ts
        return x_t

    flow_matching_loss(spy, x0, noise, t)
    assert torch.equal(seen["t"], t)
    sigmas = shift_sigmas(torch.linspace(1, 0, 5, dtype=torch.float64))
    out = euler_sample(lambda x, s: noise - x0, noise.clone(), sigmas)
    assert torch.allclose(out, x0, atol=1e-5)


def test_came_with_sana_settings_and_adamw():
    lin = torch.nn.Linear(4, 4)
    opt = build_optimizer(lin.parameters(), "came", lr=1e-4)
    g = opt.param_groups[0]
    assert type(opt).__name__ == "CAME"
    assert g["betas"] == (0.9, 0.999, 0.9999) and g["eps"] == (1e-30, 1e-16) and g["weight_decay"] == 0.0
    before = lin.weight.detach().clone()
    lin(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, lin.weight)
    assert isinstance(build_optimizer(lin.parameters(), "adamw", lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(lin.parameters(), "sgd")
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer(lin.requires_grad_(False).parameters(), "came")


def test_warmup_then_constant():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_constant(opt, 4)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [round(x, 6) for x in lrs] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert math.isclose(warmup_constant(torch.optim.SGD([p], lr=2.0), 0).get_last_lr()[0], 2.0)


def test_flow_model_loss_feeds_the_dit_timestep_1000_t():
    """The training loss goes through FlowModel.velocity: the DiT sees timestep = 1000 t (SANA's convention)."""
    from sanaedit.core.flow import FlowModel

    seen = {}

    def dit(x, hidden, timestep, mask, ref):
        seen.update(timestep=timestep, hidden=hidden, ref=ref)
        return torch.zeros_like(x)

    flow = FlowModel(dit, lambda p: p, lambda z: z, latent_channels=4, ref_channels=4, vae_scale=8)
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t, hidden, ref = torch.tensor([0.25, 0.5]), torch.randn(2, 5, 8), torch.randn(2, 4, 3, 3)
    loss = flow.loss(x0, noise, t, hidden, None, ref)
    assert torch.equal(seen["timestep"], t * 1000) and seen["hidden"] is hidden and seen["ref"] is ref
    assert torch.equal(loss, (noise - x0).pow(2).mean())
