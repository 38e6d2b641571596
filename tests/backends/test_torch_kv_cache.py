"""Text K/V cache: same outputs as the plain model, computed once per conditioning, never stale, never in training."""

from __future__ import annotations

import copy

import torch

from sanaedit.backends.torch_kv_cache import (
    disable_text_kv_cache,
    enable_text_kv_cache,
    text_kv_cache_enabled,
    text_kv_cache_stats,
)
from sanaedit.models.variants import build_transformer, load_variant


def _model():
    torch.manual_seed(0)
    return build_transformer(load_variant("tiny")).eval()


def _inputs(batch: int = 2, mask_zeros: int = 0):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(batch, 8, 24, generator=g)
    mask = torch.ones(batch, 8)
    if mask_zeros:
        mask[0, -mask_zeros:] = 0
    return text, mask


def _step(model, x, text, mask, t):
    return model(x, text, torch.full((x.shape[0],), t), mask, torch.ones_like(x))


def test_same_outputs_as_plain_model_over_steps():
    plain = _model()
    cached = enable_text_kv_cache(copy.deepcopy(plain))
    assert text_kv_cache_enabled(cached) and not text_kv_cache_enabled(plain)
    for mask_zeros in (0, 3):  # all-ones mask (bias dropped) and a padded one (bias kept)
        text, mask = _inputs(mask_zeros=mask_zeros)
        x = torch.randn(2, 4, 2, 2)
        with torch.no_grad():
            for t in (900.0, 500.0, 100.0):
                ref = _step(plain, x, text, mask, t)
                out = _step(cached, x, text, mask, t)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
                x = x - 0.1 * ref


def test_text_path_runs_once_per_conditioning():
    model = enable_text_kv_cache(_model())
    calls = []
    model.caption_projection.linear_1.register_forward_hook(lambda *_: calls.append("proj"))
    model.transformer_blocks[0].attn2.to_k.register_forward_hook(lambda *_: calls.append("k"))
    text, mask = _inputs()
    x = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        for t in (900.0, 500.0, 100.0, 10.0):
            _step(model, x, text, mask, t)
    assert calls == ["proj", "k"]
    blocks = len(model.transformer_blocks)
    assert text_kv_cache_stats(model) == {"hits": 3 * blocks, "misses": blocks}


def test_new_or_modified_text_is_recomputed():
    plain, cached = _model(), enable_text_kv_cache(_model())
    text, mask = _inputs()
    x = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        _step(cached, x, text, mask, 500.0)
        other = text.clone() * 2  # a new tensor (new prompt)
        torch.testing.assert_close(_step(cached, x, other, mask, 500.0), _step(plain, x, other, mask, 500.0))
        text.mul_(3)  # the same tensor edited in place: its version changes
        torch.testing.assert_close(_step(cached, x, text, mask, 500.0), _step(plain, x, text, mask, 500.0))


def test_bypassed_while_training_so_gradients_flow():
    model = enable_text_kv_cache(_model())
    text, mask = _inputs()
    x = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        _step(model, x, text, mask, 500.0)  # fills the cache
    loss = _step(model, x, text, mask, 500.0).square().mean()
    loss.backward()
    assert model.transformer_blocks[0].attn2.to_k.weight.grad is not None
    assert model.caption_projection.linear_1.weight.grad is not None


def test_disable_restores_plain_model_and_state_dict_names():
    plain = _model()
    keys = list(plain.state_dict())
    model = enable_text_kv_cache(copy.deepcopy(plain))
    assert list(model.state_dict()) == keys  # save_pretrained / export see the same model
    disable_text_kv_cache(model)
    assert "forward" not in vars(model.caption_projection)
    assert type(model.transformer_blocks[0].attn2.processor).__name__ == "SanaAttnProcessor2_0"
    text, mask = _inputs()
    x = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(_step(model, x, text, mask, 300.0), _step(plain, x, text, mask, 300.0))


def test_pipeline_image_unchanged_with_cache():
    from PIL import Image

    from sanaedit.tools.random_model import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    image = Image.new("RGB", (40, 56), (200, 120, 40))
    ref = pipe(image, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]
    enable_text_kv_cache(pipe.transformer)
    out = pipe(image, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]
    diff = (torch.tensor(list(ref.getdata())) - torch.tensor(list(out.getdata()))).abs()
    assert int(diff.max()) <= 1  # uint8 rounding of float-identical math
    assert text_kv_cache_stats(pipe.transformer)["hits"] > 0


def test_traced_graph_keeps_the_mask():
    """While tracing (ONNX export) nothing is cached or specialised: a graph traced with an all-ones mask still
    honours a padded mask."""
    plain = _model()
    cached = enable_text_kv_cache(copy.deepcopy(plain))
    text, ones = _inputs()
    x = torch.randn(2, 4, 2, 2)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        traced = torch.jit.trace(cached, (x, text, t, ones, torch.ones_like(x)), check_trace=False)
        _, padded = _inputs(mask_zeros=3)
        ref = plain(x, text, t, padded, torch.ones_like(x))
        torch.testing.assert_close(traced(x, text, t, padded, torch.ones_like(x)), ref, rtol=1e-5, atol=1e-6)
