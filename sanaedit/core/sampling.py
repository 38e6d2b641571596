"""Flow-matching sampling as small pure functions (in the spirit of k-diffusion's sampling.py).

Why not diffusers' FlowMatchEulerDiscreteScheduler: for the default schedule it gives the same sigmas (tested in
tests/core/test_sampling.py), but it cannot express the published engine's schedule (whose last call is a zero
step), and a 10-line pure function is what every runtime (torch, ONNX Runtime, MNN) shares without a scheduler object.

Arrays: the latents are torch tensors (PyTorch networks) or NumPy arrays (exported graphs), float32; schedules are
float64 NumPy; the samplers use only arithmetic on the latents, so one code path serves every runtime and none of
this imports torch.

Convention: x_sigma = (1 - sigma) x0 + sigma noise, the model predicts v = noise - x0, so
dx/dsigma = v and an Euler step is x += v * (sigma_next - sigma). The DiT is fed timestep = 1000 * sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sanaedit.core.arrays import float32, randn_like
from sanaedit.core.choices import Sampler, Schedule

SCHEDULES = tuple(Schedule)
SAMPLERS = tuple(Sampler)
SCM_MAX_TIME, SCM_MID_TIME = 1.57080, 1.3  # SANA-Sprint's TrigFlow times (diffusers' SCMScheduler defaults)


Array = Any  # a torch tensor or a NumPy array


def shift_sigmas(sigmas: Array, shift: float = 3.0) -> Array:
    """SD3/SANA timestep shift: s -> shift*s / (1 + (shift-1)*s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float = 3.0, schedule: str = "default") -> np.ndarray:
    """Noise levels for `num_steps` model calls, `num_steps + 1` values ending at 0 (float64 NumPy).

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
    if schedule == Schedule.DEFAULT:
        base = np.linspace(1.0, 1.0 / 1000, num_steps, dtype=np.float64)
    elif schedule == Schedule.PUBLISHED:
        base = np.linspace(0.999, 0.0, num_steps, dtype=np.float64)
    elif schedule == Schedule.LINEAR:
        return shift_sigmas(np.linspace(0.999, 0.0, num_steps + 1, dtype=np.float64), shift)
    elif schedule == Schedule.SCM:
        return trig_to_flow(scm_times(num_steps))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {[s.value for s in SCHEDULES]}")
    return np.concatenate([shift_sigmas(base, shift), [0.0]])


VelocityFn = Callable[[Array, np.float32], Array]
StepEnd = Callable[[int, float, Array], Array | None]


def _after_step(step: int, total: int, sigma: float, x: Array, callback, step_end: StepEnd | None) -> Array:
    """Every sampler's end of a step: `step_end` may replace the latent, `callback` reports progress."""
    if step_end is not None:
        replaced = step_end(step, sigma, x)
        x = x if replaced is None else replaced
    if callback is not None:
        callback(step, total)
    return x


def euler_sample(
    velocity: VelocityFn,
    x: Array,
    sigmas: np.ndarray,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: Any = None,  # unused: deterministic (one interface for every sampler)
) -> Array:
    """Integrate dx/dsigma = v(x, sigma) from sigmas[0] to sigmas[-1] with Euler steps.

    `velocity(x, sigma)` gets sigma as a float32 scalar and returns float32 like x. A step whose size is 0 (the
    published schedule's last call) cannot change x, so it is skipped instead of paying for a model call. The latent
    is a fresh array after every step (call it under no_grad: no autograd graph grows across steps).
    `callback(step, total)` reports progress; `step_end(step, sigma, x)` sees the latent after each step and may
    return a replacement.
    """
    total = len(sigmas) - 1
    x = float32(x)
    for i in range(total):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next != sigma:
            x = x + float32(velocity(x, np.float32(sigma))) * (sigma_next - sigma)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


def dpm_solver_sample(
    velocity: VelocityFn,
    x: Array,
    sigmas: np.ndarray,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: Any = None,  # unused: deterministic (one interface for every sampler)
) -> Array:
    """Flow DPM-Solver++ (2M, midpoint), SANA's default sampler: the same updates as diffusers'
    `DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")` (tested).

    In flow terms alpha = 1 - sigma, the data prediction is x0 = x - sigma v and lambda = log(alpha / sigma). The
    first step and the step to sigma 0 are first order (diffusers' `lower_order_final`); the others use the
    previous step's x0 as well. Zero-size steps are skipped as in `euler_sample`. From sigma 1 (lambda = -inf)
    the history term vanishes and the result equals Euler's: run it on the "linear" schedule, as SANA does.
    """
    total = len(sigmas) - 1
    x = float32(x)
    previous: tuple[Array, float] | None = None  # (x0, lambda) of the last model call
    for i in range(total):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next != sigma:
            x0 = x - sigma * float32(velocity(x, np.float32(sigma)))
            lam = math.log((1 - sigma) / sigma) if sigma < 1 else -math.inf
            if sigma_next == 0:
                x = x0  # the first-order step to sigma 0 lands on the data prediction
            else:
                h = math.log((1 - sigma_next) / sigma_next) - lam
                decay = (1 - sigma_next) * math.expm1(-h)  # alpha_t (e^-h - 1)
                x_next = (sigma_next / sigma) * x - decay * x0
                if previous is not None:
                    r = (lam - previous[1]) / h
                    x_next = x_next - 0.5 * decay * (x0 - previous[0]) / r
                x = x_next
            previous = (x0, lam)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


def scm_times(num_steps: int) -> np.ndarray:
    """SANA-Sprint's TrigFlow times t in [0, pi/2] (float64), as diffusers' `SCMScheduler.set_timesteps` sets them."""
    if num_steps == 2:
        return np.array([SCM_MAX_TIME, SCM_MID_TIME, 0.0], dtype=np.float64)
    return np.linspace(SCM_MAX_TIME, 0.0, num_steps + 1, dtype=np.float64)


def trig_to_flow(t: Array) -> Array:
    """TrigFlow time -> flow noise level: x_t / (sin t + cos t) = (1 - s) x0 + s z with s = sin t / (sin t + cos t).
    `t`: NumPy or torch (training draws its times in torch)."""
    sin, cos = (t.sin(), t.cos()) if hasattr(t, "sin") else (np.sin(t), np.cos(t))
    return sin / (sin + cos)


def scm_sample(
    velocity: VelocityFn,
    x: Array,
    sigmas: np.ndarray,
    callback: Callable[[int, int], None] | None = None,
    step_end: StepEnd | None = None,
    generator: Any = None,
) -> Array:
    """SANA-Sprint's sCM sampler (diffusers' `SCMScheduler` with the Sprint pipeline's TrigFlow conversion of the
    model, tested equal), in flow terms: predict x0 = x - sigma v, then re-noise it to the next level with fresh
    noise, (1 - s') x0 + s' z. For a flow model the TrigFlow conversion is exact, so this *is* the sCM step; a
    few-step student (`sanaedit distill`) is what makes 1-4 such steps good. Use with the "scm" schedule.
    """
    total = len(sigmas) - 1
    x = float32(x)
    for i in range(total):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x = x - sigma * float32(velocity(x, np.float32(sigma)))  # x0
        if sigma_next > 0:
            x = (1 - sigma_next) * x + sigma_next * randn_like(x, generator)
        x = _after_step(i + 1, total, sigma, x, callback, step_end)
    return x


SAMPLE_FUNCTIONS = {Sampler.EULER: euler_sample, Sampler.DPM: dpm_solver_sample, Sampler.SCM: scm_sample}


def get_sampler(name: str) -> Callable[..., Array]:
    if name not in SAMPLE_FUNCTIONS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {[s.value for s in SAMPLERS]}")
    return SAMPLE_FUNCTIONS[name]
