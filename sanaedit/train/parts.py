"""The module one training step runs (what DDP/FSDP wrap): the pipeline's networks, and the loss of a batch.

The flow-matching loss is `FlowModel.loss` -- the same model wrapper, timestep rule and latent scaling that
sampling goes through; the autoencoder stage's loss is L1 + MSE reconstruction; the tiny-vae stage distils the
light autoencoder from the frozen DC-AE (its encoder to the DC-AE's latents, its decoder to the DC-AE's decoding of
them), as TAESD was distilled; the refiner stage's loss is the MSE of the refined edit to the target at full
resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sanaedit.models.torch_flow import torch_flow
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.stage_settings import ControlNetSettings, Reconstruction, RefinerSettings
from sanaedit.train.stages import Stage


class TrainParts(nn.Module):
    """Everything one training step touches, as one module; `forward` returns the loss."""

    def __init__(
        self,
        pipe: SanaEditPipeline,
        stage: Stage,
        reconstruction: Reconstruction | None = None,
        refiner: RefinerSettings | None = None,
        controlnet: ControlNetSettings | None = None,
    ):
        super().__init__()
        self.transformer, self.vae, self.text_encoder = pipe.transformer, pipe.vae, pipe.text_encoder
        self.stage, self.reconstruction = stage, reconstruction or Reconstruction()
        self.tiny_vae = pipe.flow.tiny_vae  # the light autoencoder, if the model has one (carried to the export)
        if self.tiny_vae is None and "tiny_vae" in stage.trainable:
            from sanaedit.models.tiny_vae import TinyAutoencoder

            self.tiny_vae = TinyAutoencoder.for_autoencoder(self.vae).to(self.vae.device, self.vae.dtype)
        self.refiner = pipe.flow.refiner  # the learned full-resolution refiner, if the model has one (kept on export)
        if self.refiner is None and "refiner" in stage.trainable:
            from sanaedit.models.refiner import Refiner

            settings = refiner or RefinerSettings()
            self.refiner = Refiner(settings.width, unshuffle=settings.unshuffle)
        self.controlnet = pipe.controlnet  # the model's ControlNet, if it has one (trained on by its own stage)
        if self.controlnet is None and "controlnet" in stage.trainable:
            from sanaedit.models.controlnet import controlnet_from_transformer

            layers = (controlnet or ControlNetSettings()).layers
            self.controlnet = controlnet_from_transformer(
                self.transformer, min(layers, self.transformer.config.num_layers - 1)
            )
        self.flow = torch_flow(self.transformer, self.vae)  # what sampling calls too: one convention
        if self.controlnet is not None:
            from sanaedit.models.controlnet import TorchControl

            self.flow.controlnet = TorchControl(self.controlnet)
        # The frozen LLM with frozen queries maps a prompt to fixed features: compute each prompt once.
        self.cache_text = "meta_queries" not in stage.trainable
        self._text_cache: dict[str, torch.Tensor] = {}
        self._blank: dict[tuple[int, ...], torch.Tensor] = {}

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.flow.encode(pixels)

    def llm_features(self, prompts: list[str]) -> torch.Tensor:
        if not self.cache_text:
            return self.text_encoder.llm_features(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                feats = self.text_encoder.llm_features(missing)
            self._text_cache.update({p: f.detach() for p, f in zip(missing, feats)})
        return torch.stack([self._text_cache[p] for p in prompts])

    def forward(self, batch: dict[str, Any], noise: torch.Tensor | None = None, t: torch.Tensor | None = None):
        if self.stage.data == "full_res":
            return F.mse_loss(self.refiner(batch["source"], batch["edit"]).float(), batch["target"])
        if self.stage.data == "images":
            if "tiny_vae" in self.stage.trainable:
                return self.distillation_loss(batch["target"])
            return self.reconstruction_loss(batch["target"])
        paired = self.stage.data in ("edit", "control")
        if "target_latents" in batch:
            x0, ref, control = batch["target_latents"], batch.get("ref_latents"), batch.get("control_latents")
        else:
            with torch.no_grad():  # the autoencoder is frozen outside its own stage
                x0 = self.encode_images(batch["target"])
                ref = self.encode_images(batch["source"]) if paired else None
                control = self.encode_images(batch["control"]) if "control" in batch else None
        feats = batch["llm_features"] if "llm_features" in batch else self.llm_features(batch["prompt"])
        hidden, mask = self.text_encoder.condition(feats)
        if not paired:
            ref = None  # text-to-image through the editing model: zeros, as the published runtime passes
        if self.stage.data != "control":
            control = None
        elif "control_dropped" in batch:  # conditioning dropout: an empty (black) control image instead
            dropped = batch["control_dropped"].view(-1, 1, 1, 1).to(control.device)
            control = torch.where(dropped, self.blank_control(control), control)
        return self.flow.loss(x0, noise, t, hidden, mask, ref, control)

    def blank_control(self, like: torch.Tensor) -> torch.Tensor:
        """The latent of an all-black control image (no edges at all): what a dropped condition becomes (encoded
        once per size)."""
        key = tuple(like.shape[2:])
        if key not in self._blank:
            with torch.no_grad():
                black = -torch.ones(1, 3, *(s * self.flow.vae_scale for s in key), device=like.device)
                self._blank[key] = self.encode_images(black.to(like.dtype))
        return self._blank[key].to(like.dtype).expand_as(like)

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels in [-1, 1] through the autoencoder this stage trains (previews)."""
        if "tiny_vae" in self.stage.trainable:
            return self.tiny_vae.decoder(self.tiny_vae.encoder(pixels * 0.5 + 0.5)) * 2 - 1
        return self.vae(pixels).sample

    def distillation_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        """MSE of the tiny encoder to the DC-AE's latents, measured in the scaled units the DiT sees (so it weighs
        the same for any DC-AE: raw latents may spread ~2.4 or ~11.5), plus the reconstruction weights' L1 / MSE of
        the tiny decoder (of those latents) to the DC-AE decoder's output, in [-1, 1]. TAESANA's conventions: images
        in [0, 1], raw latents."""
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent
            teacher = self.vae.decode(latents).sample.float()
        encoded = self.tiny_vae.encoder(pixels * 0.5 + 0.5).float()
        decoded = self.tiny_vae.decoder(latents).float() * 2 - 1
        w = self.reconstruction
        return (
            F.mse_loss(encoded, latents.float()) * self.tiny_vae.config.scaling_factor**2
            + w.l1 * F.l1_loss(decoded, teacher)
            + w.mse * F.mse_loss(decoded, teacher)
        )

    def reconstruction_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        recon = self.vae(pixels).sample.float()
        w = self.reconstruction
        return w.l1 * F.l1_loss(recon, pixels) + w.mse * F.mse_loss(recon, pixels)
