"""Flow-matching sampling as small pure functions (in the spirit of k-diffusion's sampling.py).

Why not diffusers' FlowMatchEulerDiscreteScheduler: for the default schedule it gives the same sigmas (tested in
tests/test_sampling.py), but it cannot express the published engine's schedule (whose last call is a zero step), and
a 10-line pure function is what every runtime (torch, ONNX Runtime, MNN) shares without a scheduler object.

Convention: x_sigma = (1 - sigma) x0 + sigma noise, the model predicts v = noise - x0, so
dx/dsigma = v and an Euler step is x += v * (sigma_next - sigma). The DiT is fed timestep = 1000 * sigma.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SCHEDULES = ("default", "published", "linear", "scm")
SAMPLERS = ("euler", "dpm", "scm")
SCM_MAX_TIME, SCM_MID_TIME = 1.57080, 1.3  # SANA-Sprint's TrigFlow times (diffusers' SCMScheduler defaults)


def shift_sigmas(sigmas: torch.Tensor, shift: float = 3.0) -> torch.Tensor:
    """SD3/SANA timestep shift: s -> shift*s / (1 + (shift-1)*s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float = 3.0, schedule: str = "default") -> torch.Tensor:
    """Noise levels for `num_steps` model calls, `num_steps + 1` values ending at 0 (float64).

    - "default": shift(linspace(1, 1/1000, N)) then 0: N calls, N updates, ends exactly at sigma 0 (what diffusers'
      FlowMatchEulerDiscreteScheduler gives with these sigmas).
    - "published": the MNN-Sana-Edit-V2 engine: shift(linspace(0.999, 0, N)). Its last model call sits at sigma 0
      and changes nothing (N calls, N-1 updates); the trailing 0 appended here reproduces that zero step.
    - "linear": shift(linspace(0.999, 0, N + 1)): N calls ending at 0, what diffusers' DPMSolverMultistepScheduler
      gives with `use_flow_sigmas` (SANA's own pipelines).
    - "scm": SANA-Sprint's few-step TrigFlow times (1 step: [pi/2, 0]; 2: [pi/2, 1.3, 0]; else linspace(pi/2, 0,
      N + 1)) as flow noise levels s = sin t / (sin t + cos t); `shift` does not apply.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule == "default":
        base = torch.linspace(1.0, 1.0 / 1000, num_steps, dtype=torch.float64)
    elif schedule == "published":
        base = torch.linspace(0.999, 0.0, num_steps, dtype=torch.float64)
    elif schedule == "linear":
        return shift_sigmas(torch.linspace(0.999, 0.0, num_steps + 1, dtype=torch.float64), shift)
    elif schedule == "scm":
        return trig_to_flow(scm_times(num_steps))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    return torch.cat([shift_sigmas(base, shift), base.new_zeros(1)])


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepEnd = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


def _after_step(
    step: int, total: int, sigma: torch.Tensor, x: torch.Tensor, callback, step_end: StepEnd | None
) -> torch.Tensor:
    """Every sampler's end of a step: `step_end` may replace the latent, `callback` reports progress."""
    if step_end is not None:
        replaced = step_end(step, sigma, x)
        x = x if replaced is None else replaced
    if callback is not None:
        callback(step, total)
    return x


@torch.no_grad()
def euler_sample(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: torch.Generator | None = None,  # unused: deterministic (one interface for every sampler)
) -> torch.Tensor:
    """Integrate dx/dsigma = v(x, sigma) from sigmas[0] to sigmas[-1] with Euler steps.

    `velocity(x, sigma)` gets sigma as a 0-d float tensor. A step whose size is 0 (the published schedule's last
    call) cannot change x, so it is skipped instead of paying for a model call. The latent is a fresh tensor
    after every step, so no autograd graph ever grows across steps. `callback(step, total)` reports progress;
    `step_end(step, sigma, x)` sees the latent after each step and may return a replacement.
    """
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next != sigma:
            v = velocity(x, sigma.to(torch.float32))
            x = (x.to(torch.float32) + v.to(torch.float32) * float(sigma_next - sigma)).to(x.dtype)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


@torch.no_grad()
def dpm_solver_sample(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: torch.Generator | None = None,  # unused: deterministic (one interface for every sampler)
) -> torch.Tensor:
    """Flow DPM-Solver++ (2M, midpoint), SANA's default sampler: the same updates as diffusers'
    `DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")` (tested).

    In flow terms alpha = 1 - sigma, the data prediction is x0 = x - sigma v and lambda = log(alpha / sigma). The
    first step and the step to sigma 0 are first order (diffusers' `lower_order_final`); the others use the
    previous step's x0 as well. Zero-size steps are skipped as in `euler_sample`. From sigma 1 (lambda = -inf)
    the history term vanishes and the result equals Euler's: run it on the "linear" schedule, as SANA does.
    """
    total = len(sigmas) - 1
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x0, lambda) of the last model call
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next != sigma:
            v = velocity(x, sigma.to(torch.float32))
            x0 = x.to(torch.float32) - float(sigma) * v.to(torch.float32)
            lam = torch.log((1 - sigma) / sigma)
            if sigma_next == 0:
                x_next = x0  # the first-order step to sigma 0 lands on the data prediction
            else:
                h = torch.log((1 - sigma_next) / sigma_next) - lam
                decay = float((1 - sigma_next) * torch.expm1(-h))  # alpha_t (e^-h - 1)
                x_next = float(sigma_next / sigma) * x.to(torch.float32) - decay * x0
                if previous is not None:
                    r = float((lam - previous[1]) / h)
                    x_next = x_next - 0.5 * decay * (x0 - previous[0]) / r
            previous = (x0, lam)
            x = x_next.to(x.dtype)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


def scm_times(num_steps: int) -> torch.Tensor:
    """SANA-Sprint's TrigFlow times t in [0, pi/2], as diffusers' `SCMScheduler.set_timesteps` sets them."""
    if num_steps == 2:
        return torch.tensor([SCM_MAX_TIME, SCM_MID_TIME, 0.0], dtype=torch.float64)
    return torch.linspace(SCM_MAX_TIME, 0.0, num_steps + 1, dtype=torch.float64)


def trig_to_flow(t: torch.Tensor) -> torch.Tensor:
    """TrigFlow time -> flow noise level: x_t / (sin t + cos t) = (1 - s) x0 + s z with s = sin t / (sin t + cos t)."""
    return torch.sin(t) / (torch.sin(t) + torch.cos(t))


@torch.no_grad()
def scm_sample(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SANA-Sprint's sCM sampler (diffusers' `SCMScheduler` with the Sprint pipeline's TrigFlow conversion of the
    model, tested equal), in flow terms: predict x0 = x - sigma v, then re-noise it to the next level with fresh
    noise, (1 - s') x0 + s' z. For a flow model the TrigFlow conversion is exact, so this *is* the sCM step; a
    few-step student (`sanaedit distill`) is what makes 1-4 such steps good. Use with the "scm" schedule.
    """
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, sigma.to(torch.float32))
        x0 = x.to(torch.float32) - float(sigma) * v.to(torch.float32)
        if sigma_next > 0:
            z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
            x0 = (1 - float(sigma_next)) * x0 + float(sigma_next) * z
        x = x0.to(x.dtype)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


SAMPLE_FUNCTIONS = {"euler": euler_sample, "dpm": dpm_solver_sample, "scm": scm_sample}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLE_FUNCTIONS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    return SAMPLE_FUNCTIONS[name]
