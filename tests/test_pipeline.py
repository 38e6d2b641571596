import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.image.io import postprocess, preprocess
from sanaedit.pipeline import SanaEditPipeline


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 4 + 1), max(1, width // 4 + 1), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def run(pipe, image, seed=0, **kw):
    return np.asarray(pipe(image, generator=torch.Generator().manual_seed(seed), **kw).images[0])


@pytest.mark.parametrize("size", [(64, 64), (37, 21), (21, 37), (101, 303), (1, 1), (513, 511)])
def test_output_has_the_input_size(tiny_pipe, size):
    out = tiny_pipe(photo(*size), num_inference_steps=2).images[0]
    assert out.size == size and out.mode == "RGB"


def test_deterministic_for_a_seed(tiny_pipe):
    img = photo(50, 30)
    a, b, c = run(tiny_pipe, img, 1), run(tiny_pipe, img, 1), run(tiny_pipe, img, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_reference_image_matters(tiny_pipe):
    assert not np.array_equal(run(tiny_pipe, photo(64, 64, 0)), run(tiny_pipe, photo(64, 64, 1)))


def test_text_to_image_returns_model_resolution(tiny_pipe):
    out = tiny_pipe(None, generator=torch.Generator().manual_seed(0), num_inference_steps=3).images[0]
    assert out.size == (tiny_pipe.config.resolution,) * 2


def test_preprocess_pads_to_centred_square_and_postprocess_restores():
    img = photo(120, 40)
    pixels, restore = preprocess(img, 64)
    assert pixels.shape == (1, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert (restore.left, restore.top, restore.side) == (0, 40, 120)
    # the padding is black (-1) above and below the photo
    assert np.all(pixels[0, :, :10] == -1) and np.all(pixels[0, :, -10:] == -1)
    back = postprocess(pixels, restore)
    assert back.size == img.size
    err = np.abs(np.asarray(back, float) - np.asarray(img.resize((120, 40)), float))
    assert err.mean() < 20  # only resampling loss: 120 -> 64 -> 120 px


def test_cfg_runs_one_batch_neg_then_pos_and_scale_1_runs_batch_1(tiny_pipe, monkeypatch):
    batches = []
    original = tiny_pipe.transformer.forward

    def spy(sample, encoder_hidden_states, *args, **kwargs):
        batches.append((sample.shape[0], encoder_hidden_states.clone()))
        return original(sample, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.transformer, "forward", spy)
    tiny_pipe(photo(64, 64), num_inference_steps=2, guidance_scale=4.5, prompt="pos", negative_prompt="neg")
    assert [b for b, _ in batches] == [2, 2]
    neg, pos = tiny_pipe.encode_prompt(["neg"])[0], tiny_pipe.encode_prompt(["pos"])[0]
    assert torch.equal(batches[0][1][:1], neg) and torch.equal(batches[0][1][1:], pos)
    batches.clear()
    tiny_pipe(photo(64, 64), num_inference_steps=3, guidance_scale=1.0)
    assert [b for b, _ in batches] == [1, 1, 1]


def test_progress_callback_per_step(tiny_pipe):
    steps = []
    tiny_pipe(photo(40, 40), num_inference_steps=4, callback=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_save_load_round_trip_is_bit_exact(tiny_pipe, tiny_model_dir):
    loaded = SanaEditPipeline.from_pretrained(tiny_model_dir)
    for ours, theirs in [(tiny_pipe.transformer, loaded.transformer), (tiny_pipe.vae, loaded.vae)]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img = photo(45, 31)
    assert np.array_equal(run(tiny_pipe, img), run(loaded, img))
    assert not loaded.text_encoder_loaded  # the model's own prompts came from the prompt cache
    enc_a, enc_b = tiny_pipe.text_encoder.state_dict(), loaded.text_encoder.state_dict()
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)


def test_prompt_cache_gives_the_same_image_as_the_llm(tiny_model_dir):
    cached = SanaEditPipeline.from_pretrained(tiny_model_dir)
    img = photo(40, 60)
    with_cache = run(cached, img)
    assert not cached.text_encoder_loaded
    fresh = SanaEditPipeline.from_pretrained(tiny_model_dir)
    fresh.prompt_cache.clear()
    assert np.array_equal(with_cache, run(fresh, img)) and fresh.text_encoder_loaded
    # a new prompt loads the LLM on demand
    run(cached, img, prompt="make it night", num_inference_steps=2)
    assert cached.text_encoder_loaded


def test_one_shot_use_frees_the_llm_once_the_features_exist(tiny_model_dir):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    pipe.keep_text_encoder = False
    img = photo(40, 60)
    first = run(pipe, img, prompt="make it night", num_inference_steps=2)
    assert not pipe.text_encoder_loaded and "make it night" in pipe.prompt_cache
    assert np.array_equal(first, run(pipe, img, prompt="make it night", num_inference_steps=2))
    assert not pipe.text_encoder_loaded  # the same prompt again comes from the cache


def test_in_memory_prompt_cache_is_bounded_and_keeps_the_model_prompts(tiny_pipe, monkeypatch):
    import sanaedit.runtime.prompts as prompts_module

    monkeypatch.setattr(prompts_module, "PROMPT_CACHE_SIZE", 4)
    tiny_pipe.encode_prompt([tiny_pipe.config.prompt])
    for i in range(10):
        tiny_pipe.encode_prompt([f"prompt number {i}"])
    assert len(tiny_pipe.prompt_cache) <= 4
    assert tiny_pipe.config.prompt in tiny_pipe.prompt_cache and "prompt number 9" in tiny_pipe.prompt_cache


def test_accepts_a_path(tiny_pipe, tmp_path):
    photo(33, 17).save(tmp_path / "p.jpg")
    assert tiny_pipe(str(tmp_path / "p.jpg"), num_inference_steps=1).images[0].size == (33, 17)
