"""int8 DiT matmuls: each layer close to its float original, the swap complete, the pipeline close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sanaedit.core.cpu import has_fast_bf16
from sanaedit.load import load_pipeline
from sanaedit.models.int8 import Int8Conv1x1, Int8Linear, quantize_dit_int8
from sanaedit.pipeline import SanaEditPipeline


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_close_to_float(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(2, 7, 96)
    layer = Int8Linear(linear.weight, linear.bias)
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 7, 40)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (40, 96)
    assert 0 < _rel(out, linear(x)) < 0.02  # quantized (not exact), within 2%


def test_int8_pointwise_conv_close_to_float():
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 64, 1)
    x = torch.randn(2, 48, 5, 3)
    out = Int8Conv1x1(conv.weight, conv.bias)(x)
    assert out.shape == (2, 64, 5, 3)
    assert 0 < _rel(out, conv(x)) < 0.02


def test_dit_swap_is_complete_and_close(tiny_model_dir):
    transformer = SanaEditPipeline.from_pretrained(tiny_model_dir).transformer
    g = torch.Generator().manual_seed(0)
    c = transformer.config.out_channels
    args = (
        torch.randn(2, c, 2, 2, generator=g),
        torch.randn(2, 8, transformer.config.caption_channels, generator=g),
        torch.tensor([700.0, 300.0]),
        torch.ones(2, 8),
        torch.randn(2, c, 2, 2, generator=g),
    )
    with torch.no_grad():
        ref = transformer(*args)
        swapped = quantize_dit_int8(transformer)
        out = transformer(*args)
    blocks = transformer.transformer_blocks
    assert swapped == sum(isinstance(m, (Int8Linear, Int8Conv1x1)) for m in blocks.modules()) > 0
    assert not any(type(m) is nn.Linear for m in blocks.modules())
    assert not any(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in blocks.modules())
    assert 0 < _rel(out, ref) < 0.05


def test_int8_pipeline_close_to_fp32(tiny_model_dir):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    want = load_pipeline(tiny_model_dir, dtype="float32")(photo, generator=torch.Generator().manual_seed(0)).images[0]
    pipe = load_pipeline(tiny_model_dir, dtype="int8")
    assert any(isinstance(m, Int8Linear) for m in pipe.transformer.modules())
    out = pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]
    mse = np.mean((np.asarray(out, dtype=float) - np.asarray(want, dtype=float)) ** 2)
    assert out.size == photo.size and 10 * np.log10(255**2 / max(mse, 1e-12)) > 25


def test_the_plan_resolves_dtype():
    from sanaedit.core.choices import Format
    from sanaedit.core.config import PipelineConfig
    from sanaedit.plan import FolderInfo, make_plan

    info = FolderInfo(folder=None, format=Format.TORCH, config=PipelineConfig())
    best = "bfloat16" if has_fast_bf16() else "float32"
    assert (make_plan(info).dtype, make_plan(info).int8) == (best, False)
    assert (make_plan(info, dtype="int8").dtype, make_plan(info, dtype="int8").int8) == (best, True)
    assert (make_plan(info, dtype="float32").dtype, make_plan(info, dtype="float32", int8=True).int8) == (
        "float32",
        True,
    )
    assert make_plan(info, dtype=torch.bfloat16).dtype == "bfloat16"
    assert make_plan(info, device="cuda").dtype == "float32"  # emulated bf16 is a CPU question; off the CPU, fp32
    with pytest.raises(ValueError, match="CPU"):
        make_plan(info, dtype="int8", device="cuda")
    with pytest.raises(ValueError, match="unknown dtype"):
        make_plan(info, dtype="int4")


def test_quantizing_while_streaming_gives_the_same_layers_as_after_loading(tiny_model_dir):
    """`--dtype int8` loads make each int8 layer as its weights arrive (no float DiT held): the same buffers as
    loading in bf16 and then swapping."""
    from sanaedit.backends.torch_loading import load_model
    from sanaedit.models.int8 import int8_layer
    from sanaedit.models.transformer import SanaEditTransformer2DModel

    folder = tiny_model_dir / "transformer"
    streamed = load_model(SanaEditTransformer2DModel, folder, torch.bfloat16, replace=int8_layer)
    after = load_model(SanaEditTransformer2DModel, folder, torch.bfloat16)
    assert quantize_dit_int8(after) > 0
    assert [type(m) for m in streamed.modules()] == [type(m) for m in after.modules()]
    a, b = streamed.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------ a DiT stored in int8
@pytest.fixture(scope="module")
def int8_folder(tiny_model_dir, tmp_path_factory):
    from sanaedit.apps.cli import main

    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    assert main(["export", str(tiny_model_dir), "--format", "int8", "-o", str(out), "-q"]) == 0
    return out


def _edit(pipe) -> np.ndarray:
    photo = Image.new("RGB", (80, 56), (200, 120, 40))
    return np.asarray(pipe(photo, generator=torch.Generator().manual_seed(0)).images[0])


def test_a_dit_stored_in_int8_loads_as_the_int8_layers_and_edits_the_same(tiny_model_dir, int8_folder):
    """`export --format int8` writes the codes `--dtype int8` makes (quantized from the stored weights) and loads
    them as they are: the same layers, bit for bit, and the same picture; everything else copied byte for byte."""
    import json

    from safetensors import safe_open

    from sanaedit.formats.index import stored_int8
    from sanaedit.load import load_model_folder
    from sanaedit.models.int8 import Int8Linear

    assert stored_int8(int8_folder) and not stored_int8(tiny_model_dir)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    with safe_open(int8_folder / weights, "pt") as f:
        codes = [k for k in f.keys() if f.get_slice(k).get_dtype() == "I8"]
        assert codes and all(k.startswith("transformer_blocks.") and k.endswith(".weight") for k in codes)
    assert (int8_folder / weights).stat().st_size < (tiny_model_dir / weights).stat().st_size
    for name in ("vae/diffusion_pytorch_model.safetensors", "prompt_cache.safetensors", "model_index.json"):
        assert (int8_folder / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    config = json.loads((int8_folder / "transformer" / "config.json").read_text())
    source = json.loads((tiny_model_dir / "transformer" / "config.json").read_text())
    assert {k: v for k, v in config.items() if k not in ("sanaedit_int8", "_name_or_path")} == {
        k: v for k, v in source.items() if k != "_name_or_path"
    }
    quantized_on_load = load_model_folder(tiny_model_dir, int8=True)
    stored = load_model_folder(int8_folder)
    a, b = quantized_on_load.transformer.state_dict(), stored.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert sum(isinstance(m, Int8Linear) for m in stored.transformer.modules()) > 0
    assert np.array_equal(_edit(quantized_on_load), _edit(stored))
    staged = load_model_folder(int8_folder, staged=True)  # --low-memory loads it in its stage the same way
    assert np.array_equal(_edit(staged), _edit(stored))


def test_a_dit_stored_in_int8_refuses_what_needs_float_weights(tiny_model_dir, int8_folder, tmp_path, capsys):
    from sanaedit.apps.cli import main
    from sanaedit.train.config import ModelConfig
    from sanaedit.train.model import build_model

    lora = Path(__file__).parents[2] / "sanaedit" / "assets" / "ghibli-lora"  # a real LoRA file (any would do)
    with pytest.raises(ValueError, match="stores its DiT in int8.*LoRA merges into float weights"):
        load_pipeline(int8_folder, loras=[(lora, 1.0)])
    with pytest.raises(ValueError, match="model.from.*stores its DiT in int8.*cannot be trained"):
        build_model(ModelConfig(from_=str(int8_folder)))
    cases = [
        (["export", str(int8_folder), "-o", str(tmp_path / "x")], "export graphs from the float folder"),
        (["export", str(int8_folder), "--format", "int8", "-o", str(tmp_path / "y")], "already stored in int8"),
        (["export", str(tiny_model_dir), "--format", "int8", "-o", str(tmp_path / "z"), "--lora", str(lora)],
         "bake a LoRA in first"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) != 0
        assert message in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "xyz")
