"""The model a stage starts from and what it exports: a model folder or fresh random weights of a variant in,
the pipeline's model folder out (with the autoencoder's latent scale measured after the autoencoder stage)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from sanaedit.core.choices import Vae
from sanaedit.formats.index import stored_int8
from sanaedit.models.torch_flow import torch_flow
from sanaedit.pipeline import PipelineConfig, SanaEditPipeline
from sanaedit.train.config import ModelConfig
from sanaedit.train.parts import TrainParts


def build_model(model: ModelConfig) -> SanaEditPipeline:
    """The starting pipeline: a model folder (`model.from`) or fresh random weights of a variant (`model.seed`)."""
    if model.from_:
        from sanaedit.load import load_model_folder

        if stored_int8(model.from_):
            raise ValueError(
                f"config key 'model.from': {model.from_} stores its DiT in int8 (sanaedit export --format int8), "
                "which cannot be trained: start from the float folder it was made from"
            )
        pipe = load_model_folder(model.from_, vae=Vae.FULL)  # training needs the DC-AE whatever the folder's default
        pipe.text_encoder  # noqa: B018 - load the LLM path now (training needs it)
        return pipe
    if not model.variant:
        raise ValueError("config needs model.from (a model folder) or model.variant (a size to start from scratch)")
    from sanaedit.models.variants import Variant
    from sanaedit.tools.random_model import build_random_pipeline

    variant = model.variant
    if isinstance(variant, dict):
        variant = Variant(name="custom", **variant)
    return build_random_pipeline(variant, seed=model.seed)


def export_pipeline(
    parts: TrainParts, base: PipelineConfig, resolution: int, export: dict[str, Any]
) -> SanaEditPipeline:
    """The trained networks as a pipeline, its settings those of `base` with the training resolution and the
    config's `export:` fields over them."""
    fields = {**vars(base), "resolution": resolution, **export}
    flow = torch_flow(parts.transformer, parts.vae, getattr(parts, "tiny_vae", None), getattr(parts, "refiner", None))
    flow.controlnet = getattr(parts.flow, "controlnet", None)  # the model's ControlNet stays with it
    return SanaEditPipeline(flow, parts.text_encoder, PipelineConfig.from_dict(fields))


@torch.no_grad()
def set_latent_scale(vae: torch.nn.Module, dataset: Dataset, device: torch.device) -> float:
    """After training an autoencoder: scaling factor = 1 / std of its latents on (up to 64 of) the training
    samples, so the DiT sees unit-variance latents (how SANA/SD chose 0.41407 / 0.18215). Returns it."""
    vae = vae.eval()
    n = min(len(dataset), 64)
    items = [it for it in (dataset[i] for i in range(n)) if it is not None]
    pixels = torch.stack([it["target"] for it in items]).to(device)
    latents = torch.cat([vae.encode(pixels[i : i + 8]).latent for i in range(0, len(pixels), 8)])
    scale = float(1.0 / latents.float().std())
    vae.register_to_config(scaling_factor=scale)
    return scale
