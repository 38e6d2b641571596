"""A light autoencoder for DC-AE latents: TAESANA's architecture (madebyollin/taesd `F32Encoder` / `F32Decoder`).

Why our own module and not diffusers' `AutoencoderTiny`: its config cannot express this architecture. Its
`EncoderTiny` opens with a stride-1 convolution and keeps one width per stage (each stage's stride-2 conv maps
C -> C, without bias), while TAESANA's encoder opens with two biased stride-2 convs (3 -> 32 -> 64) with ReLUs
between; its `DecoderTiny` keeps one width throughout (the conv after each upsample maps C -> C), while TAESANA's
decoder narrows 256 -> 128 -> 64. So the layers are written out here, with the published checkpoints' exact
`nn.Sequential` indices (`encoder.N.*` / `decoder.N.*` are the keys of `taesana_encoder.pth` / `taesana_decoder.pth`
with a prefix: `load_taesd_state_dicts`).

TAESANA works on images in [0, 1] and raw (unscaled) DC-AE latents. `TinyVaeEncoder` / `TinyVaeDecoder` present
the interface of `vae.VaeEncoder` / `vae.VaeDecoder`: pixels in [-1, 1] <-> latents multiplied by the DC-AE's
scaling factor (kept in this model's config, set from the DC-AE's whenever a model folder is loaded or written).

The default config is TAESANA's (32x, 32 latent channels); other compressions (the bundled model's 8x DC-AE, the
tiny test model's) keep the same pattern with fewer stages (`for_autoencoder`).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

TAESANA_DECODER_CHANNELS = (256, 128, 64, 64, 64, 64)  # per upsampling stage, then the last block's
TAESANA_SCALING_FACTOR = 0.41407  # DC-AE F32C32's: its raw latents spread ~2.4
TAESD_LATENT_CLAMP = 3.0  # the decoder's soft clamp in every published taesd checkpoint


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class SoftClamp(nn.Module):
    """limit tanh(x / limit): keeps out-of-range latents from blowing up the decoder (taesd's `Clamp`, limit 3)."""

    def __init__(self, limit: float = TAESD_LATENT_CLAMP):
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.limit) * self.limit


class TinyBlock(nn.Module):
    """Three 3x3 convs with ReLUs, plus a skip (1x1 when the width changes), then ReLU (taesd's `Block`)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TinyAutoencoder(ModelMixin, ConfigMixin):
    """`encoder(images in [0,1]) -> raw latents`, `decoder(raw latents) -> images in [0,1]` (not clamped)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        encoder_channels: tuple[int, int] = (32, 64),
        decoder_channels: tuple[int, ...] = TAESANA_DECODER_CHANNELS,
        blocks_per_stage: int = 3,
        scaling_factor: float = TAESANA_SCALING_FACTOR,
        latent_clamp: float = TAESD_LATENT_CLAMP,
    ):
        super().__init__()
        stages = len(decoder_channels) - 1  # spatial compression 2**stages, in the encoder as in the decoder
        if stages < 2 or len(encoder_channels) != 2:
            raise ValueError("a tiny autoencoder needs at least 4x compression and two encoder widths")
        e0, e1 = encoder_channels
        encoder: list[nn.Module] = [_conv(3, e0, stride=2), nn.ReLU(), _conv(e0, e1, stride=2), nn.ReLU()]
        encoder.append(TinyBlock(e1, e1))
        for _ in range(stages - 2):
            encoder += [_conv(e1, e1, stride=2, bias=False), *(TinyBlock(e1, e1) for _ in range(blocks_per_stage))]
        encoder.append(_conv(e1, latent_channels))
        decoder: list[nn.Module] = [SoftClamp(latent_clamp), _conv(latent_channels, decoder_channels[0]), nn.ReLU()]
        for width, narrower in zip(decoder_channels[:-1], decoder_channels[1:]):
            decoder += [TinyBlock(width, width) for _ in range(blocks_per_stage)]
            decoder += [nn.Upsample(scale_factor=2), _conv(width, narrower, bias=False)]
        decoder += [TinyBlock(decoder_channels[-1], decoder_channels[-1]), _conv(decoder_channels[-1], 3)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.config.decoder_channels) - 1)

    @classmethod
    def for_autoencoder(cls, vae, latent_clamp: float | None = None) -> TinyAutoencoder:
        """Fresh weights fitting a DC-AE (`AutoencoderDC`): its latent channels, compression and scaling factor;
        TAESANA's exact architecture for a 32x one. The decoder's soft clamp covers the same range, in units of the
        latents' spread (1 / scaling factor), as TAESANA's +-3 does on its DC-AE: a DC-AE with wider raw latents
        (the bundled model's spread ~11.5 against ~2.4) would otherwise have most of them squashed flat. Published
        weights were trained with their own clamp: pass it (`TAESD_LATENT_CLAMP`)."""
        from sanaedit.models.vae import spatial_compression

        stages = spatial_compression(vae).bit_length() - 1
        channels = ((256,) * max(0, stages - 5) + TAESANA_DECODER_CHANNELS)[-(stages + 1) :]
        return cls(
            latent_channels=vae.config.latent_channels,
            decoder_channels=tuple(channels),
            scaling_factor=float(vae.config.scaling_factor),
            latent_clamp=latent_clamp or TAESD_LATENT_CLAMP * TAESANA_SCALING_FACTOR / float(vae.config.scaling_factor),
        )


def load_taesd_state_dicts(tiny: TinyAutoencoder, encoder: dict, decoder: dict) -> TinyAutoencoder:
    """Load taesd-layout state dicts (`taesana_encoder.pth` / `taesana_decoder.pth`: `0.weight`, `4.conv.0.weight`,
    ...) into `tiny`. Any missing, unexpected or wrongly shaped tensor raises ValueError naming it."""
    theirs = {f"encoder.{k}": v for k, v in encoder.items()} | {f"decoder.{k}": v for k, v in decoder.items()}
    ours = tiny.state_dict()
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        raise ValueError(
            f"not a taesd state dict for this architecture: missing {missing[:4]}{'...' if len(missing) > 4 else ''}"
            f", unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}"
        )
    for key, tensor in theirs.items():
        if tuple(tensor.shape) != tuple(ours[key].shape):
            raise ValueError(f"{key} has shape {list(tensor.shape)}, this architecture needs {list(ours[key].shape)}")
    tiny.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})
    return tiny


class TinyVaeEncoder(nn.Module):
    """pixels [B,3,H,W] in [-1,1] -> scaled latents (as `vae.VaeEncoder`)."""

    def __init__(self, tiny: TinyAutoencoder):
        super().__init__()
        self.tiny = tiny

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tiny.encoder(pixels * 0.5 + 0.5) * self.tiny.config.scaling_factor


class TinyVaeDecoder(nn.Module):
    """scaled latents -> pixels in [-1,1], not clamped (as `vae.VaeDecoder`)."""

    def __init__(self, tiny: TinyAutoencoder):
        super().__init__()
        self.tiny = tiny

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tiny.decoder(latents / self.tiny.config.scaling_factor) * 2 - 1
