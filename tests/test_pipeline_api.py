"""The Python API follows diffusers' conventions: `.images` output, lists of images, num_images_per_prompt,
strength, callback_on_step_end, set_progress_bar_config, torch_dtype."""

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.pipeline import SanaEditOutput, SanaEditPipeline


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_output_object_and_tuple(tiny_pipe):
    out = tiny_pipe(photo(30, 20), num_inference_steps=2, generator=seeded())
    assert isinstance(out, SanaEditOutput) and len(out.images) == 1 and out.images[0].size == (30, 20)
    (images,) = tiny_pipe(photo(30, 20), num_inference_steps=2, generator=seeded(), return_dict=False)
    assert np.array_equal(np.asarray(images[0]), np.asarray(out.images[0]))


def test_a_list_of_images_gives_one_output_each_in_order(tiny_pipe):
    a, b = photo(30, 20, 1), photo(17, 41, 2)
    images = tiny_pipe([a, b], num_inference_steps=2, guidance_scale=1.0, generator=seeded()).images
    assert [im.size for im in images] == [(30, 20), (17, 41)]
    alone = tiny_pipe(a, num_inference_steps=2, guidance_scale=1.0, generator=seeded()).images[0]
    assert np.array_equal(np.asarray(images[0]), np.asarray(alone))
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_pipe([])


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_num_images_per_prompt_is_one_batch_whose_first_is_the_single_result(tiny_pipe, guidance):
    source = photo(24, 24)
    many = tiny_pipe(
        source, num_inference_steps=2, guidance_scale=guidance, num_images_per_prompt=3, generator=seeded()
    )
    one = tiny_pipe(source, num_inference_steps=2, guidance_scale=guidance, generator=seeded()).images[0]
    assert len(many.images) == 3
    first = np.asarray(many.images[0], dtype=int)
    assert np.abs(first - np.asarray(one, dtype=int)).max() <= 1  # batch-of-3 vs batch-of-1 float rounding
    assert not np.array_equal(np.asarray(many.images[1]), np.asarray(many.images[2]))  # different noise


def test_strength_runs_the_last_steps_from_the_noised_source(tiny_pipe, monkeypatch):
    calls = []
    forward = tiny_pipe.transformer.forward

    def spy(sample, hidden, timestep, *args, **kwargs):
        calls.append(float(timestep[0]))
        return forward(sample, hidden, timestep, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.transformer, "forward", spy)
    tiny_pipe(photo(32, 32), num_inference_steps=10, strength=0.3, guidance_scale=1.0, generator=seeded())
    assert len(calls) == 3 and calls[0] < 600  # the last 3 of 10 steps, starting at a low noise level
    calls.clear()
    tiny_pipe(photo(32, 32), num_inference_steps=10, guidance_scale=1.0, generator=seeded())
    assert len(calls) == 10 and calls[0] > 990
    with pytest.raises(ValueError, match="strength"):
        tiny_pipe(photo(8, 8), strength=0.0)
    with pytest.raises(ValueError, match="input image"):
        tiny_pipe(None, strength=0.5)


def test_callback_on_step_end_sees_and_may_replace_the_latents(tiny_pipe):
    seen = []

    def zero_at_the_end(pipe, step, timestep, kwargs):
        seen.append((step, float(timestep), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 3 else {}

    out = tiny_pipe(None, num_inference_steps=3, callback_on_step_end=zero_at_the_end, generator=seeded()).images[0]
    assert [s for s, _, _ in seen] == [1, 2, 3] and seen[0][1] == pytest.approx(1000.0, abs=1)
    zeros = torch.zeros(1, tiny_pipe.latent_channels, *seen[0][2][2:])
    from sanaedit.image.io import postprocess

    assert np.array_equal(np.asarray(out), np.asarray(postprocess(tiny_pipe.decode_latents(zeros), None)))


def test_progress_bar_config(tiny_pipe, capsys):
    tiny_pipe.set_progress_bar_config(disable=False, desc="sampling")
    try:
        tiny_pipe(photo(8, 8), num_inference_steps=2)
    finally:
        tiny_pipe.set_progress_bar_config()
    assert "sampling" in capsys.readouterr().err
    tiny_pipe(photo(8, 8), num_inference_steps=2)
    assert "sampling" not in capsys.readouterr().err


def test_from_pretrained_takes_torch_dtype(tiny_model_dir):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16


def test_bf16_on_a_cpu_without_it_is_honoured_and_said_once(tiny_model_dir, emulated_cpu):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.bfloat16)
    pipe.to(dtype=torch.bfloat16)
    SanaEditPipeline.from_pretrained(tiny_model_dir).to(torch.device("cpu"), torch.bfloat16)
    assert pipe.dtype == torch.bfloat16  # the user's choice stands
    assert len(emulated_cpu) == 1 and emulated_cpu[0].startswith("bfloat16 is emulated on this CPU")


def test_to_an_emulated_dtype_is_said(tiny_model_dir, emulated_cpu):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    assert emulated_cpu == []
    assert pipe.to(dtype=torch.float16).dtype == torch.float16
    assert len(emulated_cpu) == 1 and emulated_cpu[0].startswith("float16 is emulated on this CPU")


def test_float32_and_auto_say_nothing(tiny_model_dir, emulated_cpu):
    from sanaedit.load import load_pipeline

    assert SanaEditPipeline.from_pretrained(tiny_model_dir).to(dtype=torch.float32).dtype == torch.float32
    assert SanaEditPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).dtype == torch.float32
    assert load_pipeline(tiny_model_dir, dtype="auto", threads=1).dtype == torch.float32  # no fast bf16: fp32
    assert emulated_cpu == []


def test_an_llm_loaded_after_to_follows_the_pipeline(tiny_model_dir):
    """The LLM loads on the first prompt outside the cache: where `to` moved the pipeline, not where it was loaded."""
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir).to(dtype=torch.bfloat16)
    assert not pipe.text_encoder_loaded
    out = pipe(photo(8, 8), prompt="a prompt no cache holds", num_inference_steps=1)
    assert pipe.text_encoder_loaded and out.images[0].size == (8, 8)
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}


def test_a_dtype_the_networks_do_not_compute_in_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="compute in torch.float32, torch.bfloat16, torch.float16, not torch.float64"):
        SanaEditPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float64)
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="not torch.int8"):
        pipe.to(dtype=torch.int8)
    assert pipe.dtype == torch.float32  # left as it was


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guidance_scale": 0.5}, "guidance_scale must be from 1 (guidance off) to 100, got 0.5"),
        ({"guidance_scale": 1e308}, "guidance_scale must be from 1 (guidance off) to 100"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be"),
        ({"strength": 0.05, "num_inference_steps": 10}, "raise strength to 0.1 or more, or num_inference_steps to 20"),
        ({"prompt": "a\udc80b"}, "prompt is not valid text: character 2 is not Unicode"),
        ({"negative_prompt": "\ud800"}, "negative_prompt is not valid text"),
    ],
)
def test_bad_call_arguments_fail_in_one_line_before_any_work(tiny_pipe, monkeypatch, kwargs, message):
    monkeypatch.setattr(tiny_pipe, "encode_image", lambda *a: pytest.fail("the encoder ran"))
    with pytest.raises(ValueError) as raised:
        tiny_pipe(photo(8, 8), **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)
