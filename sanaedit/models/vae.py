"""DC-AE (diffusers `AutoencoderDC`) as the two graphs the runtime uses: encoder and decoder.

Both take and return what the sampler works with: pixels in [-1, 1] and latents already multiplied by the
autoencoder's scaling factor (0.41407 for DC-AE F32C32).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderDC
from torch import nn

# DC-AE F32C32 (sana-1.0 / 1.1), as diffusers' `mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers` config names it.
DC_AE_F32C32 = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=[
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    decoder_block_types=[
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    encoder_layers_per_block=[2, 2, 2, 3, 3, 3],
    decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


def spatial_compression(vae: AutoencoderDC) -> int:
    return 2 ** (len(vae.config.encoder_block_out_channels) - 1)


class VaeEncoder(nn.Module):
    """pixels [B,3,H,W] in [-1,1] -> scaled latents [B,C,H/f,W/f]."""

    def __init__(self, vae: AutoencoderDC):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent * self.vae.config.scaling_factor


class VaeDecoder(nn.Module):
    """scaled latents -> pixels in [-1,1] (not clamped; the pipeline clamps when it makes an image)."""

    def __init__(self, vae: AutoencoderDC):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample
