"""The flow-matching model: how sampling and training call the networks (k-diffusion's `external.py`), and the
objective they train with (minRF's `rf.py`), in one small place.

    x_t = (1 - t) x0 + t noise,   target v = noise - x0,   loss = MSE(velocity(x_t, t), v)

`FlowModel` owns the conventions every caller shares: the DiT is fed timestep = 1000 sigma, latents are the
autoencoder's multiplied by its scaling factor (`models/vae.py`'s encoder/decoder, the modules the exported graphs
are made of), CFG is one [uncond, cond] batch. Its networks are PyTorch modules on torch tensors or exported graphs
on NumPy arrays (`arrays.py`): the pipeline, the training loop and the runtimes all go through it, and on graphs
nothing here imports torch.

t is drawn logit-normal (sigmoid of N(mean, std), as SANA / SD3 train) or uniform, then shifted
(t -> shift t / (1 + (shift - 1) t), shift 3 as SANA): the same shift the sampler uses, so training spends its
steps where sampling does. For editing, x0 is the target latent and the source latent goes in as `ref`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanaedit.core.arrays import NumpyArrays, TorchArrays, float32
from sanaedit.core.sampling import Array, VelocityFn, shift_sigmas

if TYPE_CHECKING:
    import torch
    from torch import nn

TIMESTEP_SCALE = 1000.0  # the DiT's timestep for noise level sigma (SANA, diffusers' flow schedulers)
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
    import torch

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


def flow_matching_loss(velocity: VelocityFn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE between `velocity(x_t, t)` and noise - x0 (computed in float32)."""
    import torch.nn.functional as F

    x_t, target = interpolate(x0, noise, t)
    pred = velocity(x_t, t.to(x0.device))
    return F.mse_loss(pred.float(), target.float())


class FlowModel:
    """The networks of one editor behind the calls that sampling and training make.

    `transformer(sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents) -> velocity`,
    `encoder(pixels in [-1, 1]) -> scaled latents`, `decoder(scaled latents) -> pixels`: PyTorch modules
    (`models/torch_flow.torch_flow`) or exported graphs. `vae` is the PyTorch autoencoder when there is one (training,
    export);
    `tiny_vae` the light one (`models/tiny_vae.py`) when there is one; `refiner` the learned full-resolution
    refiner (`models/refiner.py`) when the folder has one (run after decoding, by `upsample.restore_photo`).
    `controlnet` steers the DiT when a call gives a control latent: `controlnet(transformer, *the DiT's inputs,
    control, scale) -> velocity` (`models/controlnet.TorchControl`, or an exported graph of the DiT with its
    ControlNet, which ignores the DiT it is given).
    """

    def __init__(
        self,
        transformer: Callable[..., torch.Tensor],
        encoder: Callable[[torch.Tensor], torch.Tensor],
        decoder: Callable[[torch.Tensor], torch.Tensor],
        latent_channels: int,
        ref_channels: int,
        vae_scale: int,
        vae: Any = None,
        guidance_embeds: float | None = None,
        tiny_vae: Any = None,
        refiner: Any = None,
        arrays: NumpyArrays | TorchArrays | None = None,
        controlnet: Callable[..., Any] | None = None,
    ):
        self.transformer, self.encoder, self.decoder = transformer, encoder, decoder
        self.latent_channels, self.ref_channels, self.vae_scale = latent_channels, ref_channels, vae_scale
        self.vae, self.tiny_vae = vae, tiny_vae
        self.refiner = refiner  # the folder's learned full-resolution refiner (models/refiner.py), fp32 on the CPU
        self.controlnet = controlnet
        # A distilled student embeds the guidance scale (times this factor, 0.1 in SANA-Sprint): no CFG batch
        self.guidance_embeds = guidance_embeds
        # (device, dtype) fixed from outside when the networks come and go (residency.py); else read off the DiT
        self.placement: tuple[torch.device, torch.dtype] | None = None
        # what the networks take and return: torch tensors on (device, dtype), or float32 NumPy arrays (graphs)
        self.arrays = arrays or TorchArrays(self)

    @property
    def modules(self) -> list[nn.Module]:
        """The PyTorch networks (none on exported graphs)."""
        control = getattr(self.controlnet, "module", None)  # a PyTorch ControlNet's module
        return [m for m in (self.transformer, self.vae, self.tiny_vae, control) if hasattr(m, "parameters")]

    @property
    def device(self) -> torch.device | str:
        if self.placement is not None:
            return self.placement[0]
        return next(self.transformer.parameters()).device if hasattr(self.transformer, "parameters") else "cpu"

    @property
    def dtype(self) -> torch.dtype | str:
        if self.placement is not None:
            return self.placement[1]
        return next(self.transformer.parameters()).dtype if hasattr(self.transformer, "parameters") else "float32"

    # ------------------------------------------------------------------------------------------- the calls
    def encode(self, pixels: Array) -> Array:
        return self.encoder(self.arrays.input(pixels))

    def decode(self, latents: Array) -> Array:
        return self.decoder(self.arrays.input(latents))

    def velocity(
        self,
        x: Array,
        sigma: Any,
        hidden: Array,
        mask: Array,
        ref: Array | None = None,
        guidance: float | None = None,
        control: Array | None = None,
        control_scale: float = 1.0,
    ) -> Array:
        """The DiT's velocity at noise level `sigma` (a scalar or one per sample); `guidance` is the scale a
        guidance-embedding student is told (ignored by other models); `control` a control latent (one per sample),
        through the ControlNet at `control_scale`."""
        n, arrays = x.shape[0], self.arrays
        if not self.ref_channels:
            ref = None  # a text-to-image model has no reference input
        args = (arrays.input(x), hidden, arrays.full(n, sigma * TIMESTEP_SCALE), mask, ref)
        told = {}
        if self.guidance_embeds is not None:
            told["guidance"] = arrays.input(arrays.full(n, float(guidance or 1.0) * self.guidance_embeds))
        if control is None:
            return self.transformer(*args, **told)
        if self.controlnet is None:
            raise ValueError("this model has no ControlNet: load one (controlnet=DIR; CLI: --controlnet DIR)")
        return self.controlnet(self.transformer, *args, arrays.input(control), float(control_scale), **told)

    def sampling_velocity(
        self,
        hidden: Array,
        mask: Array,
        ref: Array | None = None,
        guidance: float = 1.0,
        control: Array | None = None,
        control_scale: float = 1.0,
    ) -> VelocityFn:
        """`velocity(x, sigma)` (float32) for the sampler: one conditioning (`hidden`/`mask` batch 1) and one `ref`
        (and `control`) shared by every sample of x. With guidance > 1, `hidden`/`mask` hold [uncond, cond] and the
        model runs once on the batch [x; x] (CFG; the control latent in both halves, as diffusers does)."""
        rows = self.arrays.rows
        if guidance <= 1.0 or self.guidance_embeds is not None:  # no CFG batch (a student is told the scale)

            def single(x: Array, sigma: Any) -> Array:
                n = len(x)
                conditions = (rows(hidden, n), rows(mask, n), rows(ref, n), guidance, rows(control, n))
                return float32(self.velocity(x, sigma, *conditions, control_scale))

            return single

        pairs: dict[int, tuple] = {}  # built once per batch size: the same tensors every step (text K/V cache hits)

        def guided(x: Array, sigma: Any) -> Array:
            n = len(x)
            if n not in pairs:
                pairs[n] = (self.arrays.repeat(hidden, n), self.arrays.repeat(mask, n), rows(ref, 2 * n))
            both = float32(
                self.velocity(self.arrays.cat([x, x]), sigma, *pairs[n], None, rows(control, 2 * n), control_scale)
            )
            uncond, cond = both[:n], both[n:]
            return uncond + guidance * (cond - uncond)

        return guided

    def loss(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        ref: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training objective (`flow_matching_loss`) of this model on clean latents x0 (through the ControlNet
        when `control` latents are given)."""
        return flow_matching_loss(
            lambda x_t, s: self.velocity(x_t, s, hidden, mask, ref, control=control), x0, noise.to(x0), t
        )
