"""Masked edits in latent space, as diffusers' flow inpaint pipelines (Flux, SD3) run them: after every sampler step,
the latent outside the mask is replaced by the source latent noised to the level that step reached, with the noise
the edit started from (the clean source after the last step). The sampler then edits inside the mask only, seeing
the photo around it at every step:

    x <- mask * x + (1 - mask) * ((1 - s') source + s' noise),   s' = the step's next noise level

One function for every sampler, through their `step_end` hook (core/sampling.py). The sCM sampler re-noises its x0
prediction to s' with fresh noise each step; outside the mask the source takes the starting noise at the same s'.
The latent mask is binary (`image/masks.latent_mask`), so each element holds one or the other: standard normal
noise at level s' either way, as the model expects.

Arithmetic only, on torch tensors or NumPy arrays alike (no torch import).
"""

from __future__ import annotations

import numpy as np

from sanaedit.core.sampling import Array, StepEnd


def keep_source_outside(
    source: Array, noise: Array, mask: Array, sigmas: np.ndarray, then: StepEnd | None = None
) -> StepEnd:
    """A `step_end` hook: after step i (1-based) the latent outside `mask` (1 = edit, 0 = keep; broadcast over the
    batch and channels) is `source` noised to sigmas[i] with `noise`; `then` (the caller's own hook, e.g.
    `callback_on_step_end`) sees the blended latent, as diffusers' callbacks do."""

    def step_end(step: int, sigma: float, x: Array) -> Array:
        level = float(sigmas[step])
        kept = source if level == 0 else (1 - level) * source + level * noise
        x = mask * x + (1 - mask) * kept
        if then is not None:
            replaced = then(step, sigma, x)
            x = x if replaced is None else replaced
        return x

    return step_end
