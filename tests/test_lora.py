"""LoRA styles: diffusers' Sana LoRA format both ways, scales (0 = exactly the base), CLI, export, training."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sanaedit.cli import main
from sanaedit.lora import LORA_FILE, add_lora, save_lora
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.random_model import build_tiny_pipeline


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


def _edit(pipe, **kwargs) -> np.ndarray:
    out = pipe(_photo(), num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A trained-looking LoRA for the tiny model (B not zero), saved by our writer."""
    pipe = build_tiny_pipeline()
    add_lora(pipe.transformer, rank=4, targets=("to_q", "to_k", "to_v", "to_out.0"))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    return save_lora(pipe.transformer, tmp_path_factory.mktemp("lora") / "style").parent


def test_file_is_in_diffusers_sana_lora_format(lora_dir):
    keys = list(load_file(lora_dir / LORA_FILE))
    assert (lora_dir / LORA_FILE).stat().st_mode & 0o044 == 0o044  # readable by others, like the model's files
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert any(k.endswith("attn1.to_q.lora_A.weight") for k in keys)
    # diffusers' own Sana loader reads it into its own transformer (no sanaedit code involved)
    from diffusers import SanaPipeline, SanaTransformer2DModel

    t = build_tiny_pipeline().transformer
    config = {k: v for k, v in t.config.items() if not k.startswith("_")}
    theirs = SanaTransformer2DModel.from_config({**config, "in_channels": config["out_channels"]})
    theirs.load_lora_adapter(SanaPipeline.lora_state_dict(str(lora_dir / LORA_FILE)), prefix="transformer")
    assert theirs.peft_config and any("lora_A" in n for n, _ in theirs.named_parameters())


def test_a_diffusers_trained_lora_loads(tmp_path, tiny_model_dir):
    """A LoRA saved the way diffusers' train_dreambooth_lora_sana.py saves it, on a text-to-image SANA DiT,
    loads into the editing transformer (LoRA targets never touch the ref-latent input)."""
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    t = build_tiny_pipeline().transformer
    config = {k: v for k, v in t.config.items() if not k.startswith("_")}
    base = SanaTransformer2DModel.from_config({**config, "in_channels": config["out_channels"]})
    base.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q"]))
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    SanaPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(base))
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    plain = _edit(pipe)
    pipe.load_lora(tmp_path)
    assert not np.array_equal(_edit(pipe), plain)


def test_scales_unload_and_several_at_once(tiny_model_dir, lora_dir):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    plain = _edit(pipe)
    pipe.load_lora(lora_dir, scale=0.0)
    assert np.array_equal(_edit(pipe), plain)  # scale 0: exactly the base image
    pipe.unload_lora()
    name = pipe.load_lora(lora_dir / LORA_FILE, scale=1.0)
    styled = _edit(pipe)
    assert not np.array_equal(styled, plain)
    second = pipe.load_lora(lora_dir, scale=0.0, name="again")
    assert second != name and np.array_equal(_edit(pipe), styled)  # a second adapter at 0 changes nothing
    with pytest.raises(ValueError, match="LoRA is loaded"):
        pipe.save_pretrained(tiny_model_dir.parent / "never")
    pipe.unload_lora()
    assert np.array_equal(_edit(pipe), plain)


def test_merged_lora_through_load_pipeline(tiny_model_dir, lora_dir):
    from sanaedit.defaults import load_pipeline

    adapter = SanaEditPipeline.from_pretrained(tiny_model_dir)
    adapter.load_lora(lora_dir, scale=0.7)
    merged = load_pipeline(tiny_model_dir, dtype="float32", loras=[(lora_dir, 0.7)])
    assert isinstance(merged.transformer.transformer_blocks[0].attn1.to_q, torch.nn.Linear)  # fused, no adapter
    diff = np.abs(_edit(merged).astype(int) - _edit(adapter).astype(int))
    assert diff.max() <= 1
    base = load_pipeline(tiny_model_dir, dtype="float32", loras=[(lora_dir, 0.0)])
    assert np.array_equal(_edit(base), _edit(load_pipeline(tiny_model_dir, dtype="float32")))


def test_bad_lora_files_are_named(tmp_path, tiny_model_dir, capsys):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="junk.safetensors"):
        pipe.load_lora(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="no LoRA file"):
        pipe.load_lora(tmp_path / "missing")
    args = ["edit", str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--lora", str(tmp_path / "nope")]
    with pytest.raises(SystemExit):
        main(args)  # refused while parsing, before any model loads
    assert "no LoRA file" in capsys.readouterr().err


def test_cli_edit_with_lora(tiny_model_dir, lora_dir, tmp_path):
    _photo().save(tmp_path / "p.png")
    args = ["edit", str(tmp_path / "p.png"), "--model", str(tiny_model_dir), "--steps", "2", "-q"]
    assert main([*args, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*args, "-o", str(tmp_path / "zero.png"), "--lora", f"{lora_dir}:0"]) == 0
    assert main([*args, "-o", str(tmp_path / "styled.png"), "--lora", str(lora_dir)]) == 0
    read = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "zero", "styled")]
    assert np.array_equal(read[0], read[1]) and not np.array_equal(read[0], read[2])


@pytest.mark.slow
def test_export_merges_the_lora(tiny_model_dir, lora_dir, tmp_path):
    from sanaedit.defaults import load_pipeline

    out = tmp_path / "onnx"
    args = ["export", str(tiny_model_dir), "-o", str(out), "--quant", "none", "--lora", f"{lora_dir}:0.5", "-q"]
    assert main(args) == 0
    want = _edit(load_pipeline(tiny_model_dir, dtype="float32", loras=[(lora_dir, 0.5)]))
    got = _edit(load_pipeline(out))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_lora_stage_trains_only_the_adapters(tmp_path, tiny_model_dir, tiny_edit_pairs):
    from sanaedit.train.loop import train

    data = tiny_edit_pairs
    config = {
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "model": {"from": str(tiny_model_dir)},
        "data": {"manifest": str(data)},
        "train": {"stage": "lora", "steps": 3, "batch_size": 2, "optimizer": "adamw", "lr": 1e-2, "lora": {"rank": 2}},
        "log": {"progress": False},
        "checkpoint": {"every": 0},
    }
    out = train(config)
    assert out == tmp_path / "run" / "lora" and (out / LORA_FILE).is_file()
    tensors = load_file(out / LORA_FILE)
    assert {t.shape[0] for k, t in tensors.items() if "lora_A" in k} == {2}  # rank 2
    assert any(t.any() for k, t in tensors.items() if "lora_B" in k)  # B left zero-init: trained
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    plain = _edit(pipe)
    pipe.load_lora(out)
    assert not np.array_equal(_edit(pipe), plain)
    with pytest.raises(ValueError, match="last stage"):
        train({**config, "stages": [{"train": {"stage": "lora"}}, {"train": {"stage": "stage3"}}]})
