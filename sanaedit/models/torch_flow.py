"""PyTorch networks as a `FlowModel`: a SANA edit transformer and its autoencoders, their shapes checked against each
other, wrapped in the encoder/decoder modules the sampler and the exported graphs share."""

from __future__ import annotations

from typing import Any

from torch import nn

from sanaedit.core.flow import FlowModel
from sanaedit.errors import ModelFolderError
from sanaedit.models.tiny_vae import TinyVaeDecoder, TinyVaeEncoder
from sanaedit.models.vae import VaeDecoder, VaeEncoder, spatial_compression


def torch_flow(
    transformer: nn.Module, vae: nn.Module | None, tiny_vae: nn.Module | None = None, refiner: Any = None
) -> FlowModel:
    """A diffusers-style SANA edit transformer and DC-AE; their shapes must fit (checked, named). The networks
    run on the DC-AE; with `vae=None`, on the light `tiny_vae` (the DC-AE not even loaded)."""
    if vae is None and tiny_vae is None:
        raise ModelFolderError("no autoencoder: give the DC-AE, the tiny one, or both")
    if tiny_vae is not None and vae is not None and tiny_vae.spatial_compression != spatial_compression(vae):
        raise ModelFolderError(
            f"tiny autoencoder compression {tiny_vae.spatial_compression} != DC-AE's {spatial_compression(vae)}"
        )
    t, v = transformer.config, (vae if vae is not None else tiny_vae).config
    if t.out_channels != v.latent_channels:
        raise ModelFolderError(
            f"transformer out_channels {t.out_channels} != autoencoder latent_channels {v.latent_channels}"
        )
    if transformer.ref_channels not in (0, v.latent_channels):
        raise ModelFolderError(
            f"transformer in_channels {t.in_channels} fits neither a text-to-image ({v.latent_channels}) nor an "
            f"editing ({2 * v.latent_channels}) model"
        )
    if tiny_vae is not None and tiny_vae.config.latent_channels != t.out_channels:
        raise ModelFolderError(
            f"transformer out_channels {t.out_channels} != tiny autoencoder latent_channels "
            f"{tiny_vae.config.latent_channels}"
        )
    full = vae is not None
    return FlowModel(
        transformer,
        VaeEncoder(vae) if full else TinyVaeEncoder(tiny_vae),
        VaeDecoder(vae) if full else TinyVaeDecoder(tiny_vae),
        latent_channels=t.out_channels,
        ref_channels=transformer.ref_channels,
        vae_scale=spatial_compression(vae) if full else tiny_vae.spatial_compression,
        vae=vae,
        guidance_embeds=t.guidance_embeds_scale if t.get("guidance_embeds") else None,
        tiny_vae=tiny_vae,
        refiner=refiner,
    )


def place_modules(modules: list[Any], device: Any = None, dtype: Any = None) -> None:
    """Move the PyTorch modules among `modules` to `device` / `dtype` (None: as they are); others are skipped. A
    module already there is left alone: a no-op `.to()` still warns."""
    import torch

    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        param = next(module.parameters())
        same_device = device is None or param.device == torch.device(device)
        if not (same_device and (dtype is None or param.dtype == dtype)):
            module.to(device=device, dtype=dtype)
