"""The edit transformer: diffusers' SANA linear DiT with the source latent beside the noise.

The backbone (LiteLA linear attention, Mix-FFN, AdaLN-single, cross-attention to text) is diffusers'
`SanaTransformer2DModel`, unchanged. Editing feeds `ref_latents` (the source image's DC-AE latent) by
concatenating it to `sample` on channels, so the backbone sees `in_channels = 2 * out_channels`. The saved
folder is a plain diffusers folder: `SanaTransformer2DModel.from_pretrained` reads it too.
"""

from __future__ import annotations

import torch
from diffusers import SanaTransformer2DModel


class SanaEditTransformer2DModel(SanaTransformer2DModel):
    """SANA DiT with the published editor's I/O: `(sample, text, timestep, text mask, ref_latents) -> velocity`."""

    @property
    def ref_channels(self) -> int:
        """Channels reserved for `ref_latents` (0 for a text-to-image model)."""
        return self.config.in_channels - (self.config.out_channels or self.config.in_channels)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        ref_latents: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        controlnet_block_samples: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.ref_channels:
            if ref_latents is None:  # text-to-image through an editing model: the published runtime passes zeros
                ref_latents = torch.zeros_like(sample)
            if ref_latents.shape != sample.shape:
                raise ValueError(f"ref_latents shape {tuple(ref_latents.shape)} != sample shape {tuple(sample.shape)}")
            sample = torch.cat([sample, ref_latents], dim=1)
        elif ref_latents is not None:
            raise ValueError("this transformer has no reference-latent input (in_channels == out_channels)")
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("this transformer embeds the guidance scale (a distilled student): pass `guidance`")
        return super().forward(
            sample,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            guidance=guidance if self.config.guidance_embeds else None,
            encoder_attention_mask=encoder_attention_mask,
            controlnet_block_samples=controlnet_block_samples,  # a ControlNet's residuals (models/controlnet.py)
            return_dict=False,
        )[0]

    def with_guidance_embedding(self) -> SanaEditTransformer2DModel:
        """A copy that also embeds the guidance scale (SANA-Sprint's student: one forward per step, no CFG batch).

        The guidance embedder's output layer starts at zero, so the copy gives exactly this model's output for any
        guidance until distillation trains it.
        """
        if self.config.guidance_embeds:
            raise ValueError("this transformer already embeds the guidance scale")
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        student = type(self).from_config({**config, "guidance_embeds": True})
        if student.dtype != self.dtype:
            student = student.to(self.dtype)
        # diffusers nests the timestep embedder one level deeper without guidance (AdaLayerNormSingle.emb)
        state = {k.replace("time_embed.emb.", "time_embed."): v for k, v in self.state_dict().items()}
        missing, unexpected = student.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("time_embed.guidance_") for k in missing):
            raise ValueError(f"cannot add a guidance embedding: missing {missing}, unexpected {unexpected}")
        out = student.time_embed.guidance_embedder.linear_2
        torch.nn.init.zeros_(out.weight)
        torch.nn.init.zeros_(out.bias)
        return student

    def set_fp16_clipping(self, enabled: bool = True) -> None:
        """Clip every linear-attention output to the fp16 range (+-65504), in any dtype.

        SANA checkpoints trained in fp16 rely on diffusers clipping this output in fp16 only; in fp32/bf16 the
        same weights blow up (diffusers issue 10336: activations of 5e5-1.3e6). This reproduces the clipping.
        """
        for handle in getattr(self, "_clip_handles", []):
            handle.remove()
        self._clip_handles = []
        if enabled:
            for block in self.transformer_blocks:
                hook = block.attn1.register_forward_hook(lambda _m, _in, out: out.clamp(-65504, 65504))
                self._clip_handles.append(hook)

    @classmethod
    def from_base(cls, base: SanaTransformer2DModel) -> SanaEditTransformer2DModel:
        """Expand a text-to-image SANA transformer for editing.

        The patch embedding gains input channels for `ref_latents` with **zero** weights, so the converted model
        gives exactly the base model's output until training teaches it to use the reference.
        """
        config = dict(base.config)
        latent_channels = config["in_channels"]
        if config.get("out_channels") not in (None, latent_channels):
            raise ValueError(
                f"base transformer already has in_channels={latent_channels} != out_channels={config['out_channels']}"
            )
        config["out_channels"] = latent_channels
        config["in_channels"] = 2 * latent_channels
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        model = cls.from_config(config)
        if base.dtype != model.dtype:
            model = model.to(dtype=base.dtype)
        state = base.state_dict()
        weight = state["patch_embed.proj.weight"]
        state["patch_embed.proj.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
        model.load_state_dict(state, strict=True)
        return model
