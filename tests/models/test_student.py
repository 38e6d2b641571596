"""The guidance-embedding student (SANA-Sprint): one forward per step, no CFG batch, exact at initialisation."""

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.pipeline import SanaEditPipeline


def _student(tiny_pipe) -> SanaEditPipeline:
    student = tiny_pipe.transformer.with_guidance_embedding().eval()
    return SanaEditPipeline.from_modules(student, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.config)


def test_student_starts_as_the_teacher_without_guidance(tiny_pipe):
    student = _student(tiny_pipe)
    assert student.flow.guidance_embeds == pytest.approx(0.1)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8))
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    teacher = tiny_pipe(photo, guidance_scale=1.0, **kwargs).images[0]
    kwargs["generator"] = torch.Generator().manual_seed(0)
    told = student(photo, guidance_scale=4.5, **kwargs).images[0]  # the zero-initialised embedder ignores it
    assert np.array_equal(np.asarray(teacher), np.asarray(told))
    with pytest.raises(ValueError, match="already embeds"):
        student.transformer.with_guidance_embedding()


def test_student_runs_one_pass_per_step_and_is_told_the_scale(tiny_pipe, monkeypatch):
    student = _student(tiny_pipe)
    seen = []
    forward = student.transformer.forward

    def spy(sample, hidden, timestep, mask=None, ref=None, guidance=None):
        seen.append((sample.shape[0], hidden.shape[0], None if guidance is None else float(guidance[0])))
        return forward(sample, hidden, timestep, mask, ref, guidance=guidance)

    monkeypatch.setattr(student.transformer, "forward", spy)
    student(Image.new("RGB", (16, 16)), num_inference_steps=2, guidance_scale=4.5)
    assert seen == [(1, 1, pytest.approx(0.45))] * 2  # batch 1, no negative prompt, guidance x 0.1
    with pytest.raises(ValueError, match="pass `guidance`"):
        forward(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 24), torch.zeros(1))


def test_student_folder_round_trip(tiny_pipe, tmp_path):
    folder = _student(tiny_pipe).save_pretrained(tmp_path / "student")
    loaded = SanaEditPipeline.from_pretrained(folder)
    assert loaded.transformer.config.guidance_embeds and loaded.flow.guidance_embeds == pytest.approx(0.1)
