"""The run-time settings a model folder stores in model_index.json: the model's own defaults for every edit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sanaedit.image.upsample import DEFAULT_METHOD as DEFAULT_UPSAMPLE
from sanaedit.models.prompt import PROMPT_TEMPLATE

COMIC_PROMPT = "Convert to a comic-style illustration: bold ink outlines, flat colours, keep the scene consistent."


@dataclass
class PipelineConfig:
    """Run-time settings stored in model_index.json (the model's own defaults)."""

    resolution: int = 512
    prompt: str = COMIC_PROMPT
    negative_prompt: str = ""
    num_inference_steps: int = 10
    guidance_scale: float = 4.5
    shift: float = 3.0
    schedule: str = "default"
    sampler: str = "euler"  # or "dpm" (flow DPM-Solver++), "scm" (SANA-Sprint's few-step sampler): sampling.py
    template: str = PROMPT_TEMPLATE
    fp16_clipping: bool = False  # for fp16-trained SANA checkpoints run in fp32/bf16 (see transformer.py)
    padding: str = "black"  # fills the square around a non-square photo: "black" (the published engine) or "reflect"
    upsample: str = DEFAULT_UPSAMPLE  # back to the photo's size: upsample.METHODS ("guided", "refine", "plain", ...)
    vae: str = "full"  # the autoencoder edits run on: "full" (DC-AE) or "tiny" (model_folder.choose_vae)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
