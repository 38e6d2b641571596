"""The flow-matching objective, in one small place (the training-side twin of `sanaedit.sampling`).

    x_t = (1 - t) x0 + t noise,   target v = noise - x0,   loss = MSE(model(x_t, 1000 t), v)

t is drawn logit-normal (sigmoid of N(mean, std), as SANA / SD3 train) or uniform, then shifted
(t -> shift t / (1 + (shift - 1) t), shift 3 as SANA): the same shift the sampler uses, so training spends its
steps where sampling does. For editing, x0 is the target latent and the source latent goes in as `ref_latents`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..sampling import shift_sigmas

T_SAMPLING = ("logit_normal", "uniform")


def sample_t(
    n: int,
    generator: torch.Generator | None = None,
    mode: str = "logit_normal",
    shift: float = 3.0,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """n noise levels in (0, 1), float32, on the CPU (move them with the batch)."""
    if mode == "logit_normal":
        u = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    elif mode == "uniform":
        u = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"unknown t sampling {mode!r}; choose one of {T_SAMPLING}")
    return shift_sigmas(u, shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) for clean latents x0, noise and per-sample t."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise, noise - x0


def flow_matching_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """MSE between `velocity(x_t, timestep=1000 t)` and noise - x0 (computed in float32)."""
    x_t, target = interpolate(x0, noise, t)
    pred = velocity(x_t, (t * 1000).to(x0.device))
    return F.mse_loss(pred.float(), target.float())
