"""The run-time settings a model folder stores in model_index.json: the model's own defaults for every edit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sanaedit.core.choices import Padding, Sampler, Schedule, Upsample, Vae

# The published editor's Qwen chat template around an instruction. `<|vision_bos|>` is not a Qwen3 special token: it
# tokenizes as text.
PROMPT_TEMPLATE = "<|im_start|>user\nGenerate an image: {prompt}<|im_end|>\n<|im_start|>assistant\n<|vision_bos|>"
MAX_GUIDANCE = 100.0  # SANA runs at 4.5; a bound so a typo (1e308) fails in one line, not as overflowed latents
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
    schedule: Schedule = Schedule.DEFAULT
    sampler: Sampler = Sampler.EULER  # or DPM (flow DPM-Solver++), SCM (SANA-Sprint's few-step sampler): sampling.py
    template: str = PROMPT_TEMPLATE
    fp16_clipping: bool = False  # for fp16-trained SANA checkpoints run in fp32/bf16 (see transformer.py)
    padding: Padding = (
        Padding.BLACK
    )  # fills the square around a non-square photo: BLACK (the published engine), REFLECT
    upsample: Upsample = Upsample.GUIDED  # back to the photo's own size (image/upsample.py)
    vae: Vae = Vae.FULL  # the autoencoder edits run on: the DC-AE, or the folder's light one

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """From model_index.json's "pipeline" entry: unknown keys ignored, known choices as their enum members (a value
        outside them is kept as written, for the run plan to name with its folder: runtime/plan.py)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for name, kind in CHOICES.items():
            if isinstance(values.get(name), str) and values[name] in set(kind):
                values[name] = kind(values[name])
        return cls(**values)


CHOICES = {"schedule": Schedule, "sampler": Sampler, "padding": Padding, "upsample": Upsample, "vae": Vae}
