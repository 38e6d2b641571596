"""The ControlNet: diffusers' `SanaControlNetModel`, unchanged, built from an editing DiT and run beside it.

A ControlNet folder is a plain diffusers folder (`SanaControlNetModel.from_pretrained` reads what we write, and we
read what diffusers writes). Its residuals enter the DiT as diffusers' `controlnet_block_samples` do: the output
of ControlNet block k, through its zero-initialised projection and times the conditioning scale, is added after
main block k + 1 (`SanaTransformer2DModel.forward`). NVlabs/Sana adds copy k's output after main block k instead;
we follow diffusers, so its weights and ours are the same thing.

The input channels of an editing model. The ControlNet's patch embedding is a copy of the DiT's, which reads
`in_channels = noise + reference latents`: the ControlNet reads the same `[noisy sample, reference]` the DiT
does, and its condition goes through the same embedding (diffusers: `input_block(patch_embed(cond))`), so the
condition needs `in_channels` channels too. The control latent fills the reference channels and the noise channels
are zero: the reference half of the embedding was trained on clean photo latents, which is what a control latent
is (a clean DC-AE latent of a picture), while the noise half was trained on noisy latents at the step's level. For
a text-to-image model (`in_channels` = latent channels) the control latent is the whole input, as in diffusers.
"""

from __future__ import annotations

import torch
from diffusers import SanaControlNetModel
from torch import nn

DEFAULT_LAYERS = 7  # NVlabs/Sana's `copy_blocks_num`, and diffusers' default
# the config entries a ControlNet copies from its DiT (diffusers' SanaControlNetModel's own names)
COPIED_CONFIG = (
    "in_channels",
    "out_channels",
    "num_attention_heads",
    "attention_head_dim",
    "num_cross_attention_heads",
    "cross_attention_head_dim",
    "cross_attention_dim",
    "caption_channels",
    "mlp_ratio",
    "dropout",
    "attention_bias",
    "sample_size",
    "patch_size",
    "norm_elementwise_affine",
    "norm_eps",
    "interpolation_scale",
)
# the DiT's modules a new ControlNet starts as a copy of (besides its first blocks)
COPIED_MODULES = ("patch_embed.", "time_embed.", "caption_projection.", "caption_norm.")


def controlnet_from_transformer(transformer: nn.Module, num_layers: int = DEFAULT_LAYERS) -> SanaControlNetModel:
    """A new ControlNet for `transformer`, the way NVlabs/Sana starts one: a copy of its patch embedding, timestep
    and caption embeddings and first `num_layers` blocks, with the input block and every block's output projection
    zero. So until it is trained its residuals are zero, and the DiT's output is exactly its own."""
    config = transformer.config
    if not 1 <= num_layers <= config.num_layers:
        raise ValueError(f"a ControlNet copies 1 to {config.num_layers} of this DiT's blocks, not {num_layers}")
    if config.get("guidance_embeds"):
        raise ValueError(
            "this DiT embeds the guidance scale (a distilled student): train the ControlNet on the model it was "
            "distilled from (the student runs with it all the same)"
        )
    if config.get("qk_norm") is not None:
        raise ValueError(f"diffusers' SanaControlNetModel has no qk_norm (this DiT has {config.qk_norm!r})")
    controlnet = SanaControlNetModel(num_layers=num_layers, **{k: config[k] for k in COPIED_CONFIG})
    kept = tuple(f"transformer_blocks.{i}." for i in range(num_layers))
    state = {k: v for k, v in transformer.state_dict().items() if k.startswith(COPIED_MODULES + kept)}
    missing, unexpected = controlnet.load_state_dict(state, strict=False)
    fresh = [k for k in missing if not k.startswith(("input_block.", "controlnet_blocks."))]
    if fresh or unexpected:
        raise ValueError(f"cannot copy this DiT into a ControlNet: missing {fresh}, unexpected {unexpected}")
    if controlnet.dtype != transformer.dtype or controlnet.device != transformer.device:
        controlnet = controlnet.to(device=transformer.device, dtype=transformer.dtype)
    return controlnet


def check_fits(controlnet: nn.Module, transformer: nn.Module) -> None:
    """ValueError naming the first config entry where `controlnet` cannot steer `transformer`."""
    c, t = controlnet.config, transformer.config
    width = (c.num_attention_heads * c.attention_head_dim, t.num_attention_heads * t.attention_head_dim)
    if width[0] != width[1]:
        raise ValueError(f"ControlNet width {width[0]} != the DiT's {width[1]}")
    for key in ("in_channels", "patch_size", "caption_channels"):
        if c[key] != t[key]:
            raise ValueError(f"ControlNet {key} {c[key]} != the DiT's {t[key]}")
    if c.num_layers > t.num_layers - 1:  # residual k lands after main block k + 1
        raise ValueError(f"ControlNet has {c.num_layers} blocks; this {t.num_layers}-block DiT takes at most "
                         f"{t.num_layers - 1}")  # fmt: skip


def control_input(controlnet: nn.Module, control: torch.Tensor) -> torch.Tensor:
    """The control latent [B, C, h, w] as the ControlNet's condition [B, in_channels, h, w]: zeros in the noise
    channels, the control latent in the reference channels (see the module's docstring for why)."""
    extra = controlnet.config.in_channels - control.shape[1]
    if extra < 0:
        raise ValueError(
            f"control latent has {control.shape[1]} channels; the ControlNet reads {extra + control.shape[1]}"
        )
    if extra == 0:
        return control
    return torch.cat([control.new_zeros(control.shape[0], extra, *control.shape[2:]), control], dim=1)


def control_residuals(
    controlnet: nn.Module,
    sample: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None,
    ref_latents: torch.Tensor | None,
    control: torch.Tensor,
    scale: float | torch.Tensor,
) -> list[torch.Tensor]:
    """The ControlNet's `controlnet_block_samples` for one DiT call: it reads what the DiT reads (the sample with
    the reference latents beside it) and the control latent. `scale`: a number, or one per sample ([B])."""
    hidden = sample if ref_latents is None else torch.cat([sample, ref_latents], dim=1)
    if isinstance(scale, torch.Tensor):
        scale = scale.to(sample.dtype).view(-1, 1, 1)  # one per sample, against [B, tokens, width]
    return controlnet(
        hidden,
        encoder_hidden_states,
        timestep,
        controlnet_cond=control_input(controlnet, control.to(sample.dtype)),
        conditioning_scale=scale,
        encoder_attention_mask=encoder_attention_mask,
        return_dict=False,
    )[0]


class TorchControl:
    """A PyTorch ControlNet as `FlowModel.controlnet` (core/flow.py): `(transformer, *the DiT's inputs, control,
    scale) -> velocity`. The DiT is passed at each call, so the one the flow holds then is steered (staged residency
    loads a fresh one per edit)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, transformer, sample, encoder_hidden_states, timestep, mask, ref, control, scale, **kwargs):
        residuals = control_residuals(self.module, sample, encoder_hidden_states, timestep, mask, ref, control, scale)
        return transformer(
            sample, encoder_hidden_states, timestep, mask, ref, controlnet_block_samples=residuals, **kwargs
        )
