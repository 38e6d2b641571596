"""LoRA styles: diffusers' Sana LoRA format both ways, scales (0 = exactly the base), CLI, export, training."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sanaedit.apps.cli import main
from sanaedit.models.lora import LORA_FILE, add_lora, save_lora
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.tools.random_model import build_tiny_pipeline


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


def _edit(pipe, **kwargs) -> np.ndarray:
    out = pipe(_photo(), num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.images[0])


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


def test_our_lora_gives_the_same_output_in_diffusers(tiny_model_dir, lora_dir):
    """Our file in diffusers' own SanaTransformer2DModel (its loader, its set_adapters scale) gives the output
    sanaedit's load_lora gives on our editing transformer, same weights and inputs; at scale 0 both are the base."""
    from diffusers import SanaPipeline, SanaTransformer2DModel

    from sanaedit.models.lora import load_lora, unload_loras
    from sanaedit.models.transformer import SanaEditTransformer2DModel

    ours = SanaEditTransformer2DModel.from_pretrained(tiny_model_dir / "transformer").eval()
    config = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    theirs = SanaTransformer2DModel.from_config(config).eval()  # in_channels: noise + reference, concatenated
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(2, 4, 4, 6, generator=g), torch.randn(2, 4, 4, 6, generator=g)
    text = torch.randn(2, 5, 24, generator=g)
    mask, t = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), torch.tensor([700.0, 250.0])

    @torch.no_grad()
    def run(model):
        if model is ours:
            return ours(x, text, t, mask, ref_latents=ref)
        return theirs(torch.cat([x, ref], 1), text, t, encoder_attention_mask=mask, return_dict=False)[0]

    base = run(ours)
    assert torch.equal(run(theirs), base)
    load_lora(ours, lora_dir, scale=0.5)
    state = SanaPipeline.lora_state_dict(str(lora_dir / LORA_FILE))
    theirs.load_lora_adapter(state, prefix="transformer", adapter_name="style")
    theirs.set_adapters(["style"], [0.5])
    styled = run(ours)
    assert (styled - base).abs().max() > 0.1 * base.abs().max()  # the LoRA really moves the output
    torch.testing.assert_close(run(theirs), styled, rtol=1e-5, atol=1e-5 * float(styled.abs().max()))
    unload_loras(ours)
    load_lora(ours, lora_dir, scale=0.0)
    theirs.set_adapters(["style"], [0.0])
    assert torch.equal(run(ours), base) and torch.equal(run(theirs), base)


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
    from sanaedit.load import load_pipeline

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


def test_a_lora_of_the_wrong_shape_is_one_line_naming_the_layer(tmp_path, tiny_model_dir, lora_dir, capsys):
    from safetensors.torch import save_file

    state = load_file(lora_dir / LORA_FILE)
    key = next(k for k in state if k.endswith("attn1.to_k.lora_A.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)
    save_file(state, tmp_path / "wrong.safetensors")
    _photo().save(tmp_path / "p.png")
    args = ["edit", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir)]
    assert main([*args, "--lora", str(tmp_path / "wrong.safetensors"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this model: transformer_blocks.0.attn1.to_k has" in err[0], err
    assert not (tmp_path / "o.png").exists()


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
    from sanaedit.load import load_pipeline

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


def test_shipped_ghibli_lora_on_the_bundled_model():
    """The shipped Ghibli LoRA loads into the bundled comic model: at scale 0 the edit is bit-identical to the base
    edit (same upsampling: a loaded LoRA switches "refine" to "guided"), at scale 1 it is another picture."""
    from sanaedit.image.io import load_image
    from sanaedit.load import ASSETS, SAMPLE_PHOTO, load_pipeline

    pipe = load_pipeline(None, backend="torch")  # a LoRA needs the PyTorch folder
    pipe.config.resolution = 128  # (256 is the model's; 128 keeps the test fast)
    photo = load_image(SAMPLE_PHOTO).resize((64, 48))

    def edit() -> np.ndarray:
        return np.asarray(pipe(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0])

    assert pipe.config.upsample == "refine"
    pipe.config.upsample = "guided"
    base = edit()
    pipe.load_lora(ASSETS / "ghibli-lora", scale=0.0)
    assert pipe.config.upsample == "guided" and np.array_equal(edit(), base)
    pipe.unload_lora()
    pipe.load_lora(ASSETS / "ghibli-lora", scale=1.0)
    styled = edit()
    assert styled.shape == base.shape == (48, 64, 3)
    assert np.abs(styled.astype(int) - base.astype(int)).mean() > 2


def test_serve_cli_merges_its_lora(tiny_model_dir, lora_dir, tmp_path, monkeypatch):
    """`sanaedit serve --lora FILE:0.5` (no live server: `serve` is replaced) builds its app on a pipeline whose DiT
    weights are the base's plus 0.5 * B @ A from the file, for every adapted layer."""
    import sanaedit.apps.serve.server
    import sanaedit.load

    loaded, served = [], {}
    load_pipeline = sanaedit.load.load_pipeline
    monkeypatch.setattr(
        sanaedit.load, "load_pipeline", lambda *a, **k: loaded.append(load_pipeline(*a, **k)) or loaded[-1]
    )
    monkeypatch.setattr(sanaedit.apps.serve.server, "serve", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("SANAEDIT_TOKEN", raising=False)
    args = ["serve", "--model", str(tiny_model_dir), "--dtype", "float32", "--lora", f"{lora_dir}:0.5", "--port", "0"]
    assert main([*args, "-o", str(tmp_path / "results"), "-q"]) == 0
    assert served["app"] is not None and served["port"] == 0 and len(loaded) == 1
    dit, base = loaded[0].transformer, SanaEditPipeline.from_pretrained(tiny_model_dir).transformer
    lora = load_file(lora_dir / LORA_FILE)
    layers = [
        k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in lora if k.endswith("lora_A.weight")
    ]
    assert layers and not getattr(dit, "peft_config", None)  # merged into the weights, no adapters left
    for name in layers:
        delta = lora[f"transformer.{name}.lora_B.weight"] @ lora[f"transformer.{name}.lora_A.weight"]
        want = base.get_submodule(name).weight + 0.5 * delta
        torch.testing.assert_close(dit.get_submodule(name).weight, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["diffusers", "peft"])
def test_alpha_other_than_the_rank_applies_as_peft_merges_it(tmp_path, tiny_model_dir, layout):
    """A LoRA with alpha = 2 x rank scales its update by 2: read from the file's `lora_adapter_metadata` (diffusers'
    layout, what save_lora writes) or from peft's `adapter_config.json`, it edits as peft's own merge of the same
    adapter (taken as alpha = rank, it would apply at half the strength)."""
    import copy

    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    from sanaedit.models.lora import load_lora
    from sanaedit.models.transformer import SanaEditTransformer2DModel

    base = SanaEditTransformer2DModel.from_pretrained(tiny_model_dir / "transformer").eval()
    trained = copy.deepcopy(base)
    add_lora(trained, rank=2, alpha=4, targets=("to_q", "to_k", "to_v", "to_out.0"))
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    if layout == "diffusers":
        save_lora(trained, tmp_path)
    else:  # what peft's PeftModel.save_pretrained writes: its own key prefix and config file
        state = get_peft_model_state_dict(trained, adapter_name="default")
        save_file(
            {f"base_model.model.{k}": v.contiguous() for k, v in state.items()}, tmp_path / "adapter_model.safetensors"
        )
        trained.peft_config["default"].save_pretrained(tmp_path)
    merged = copy.deepcopy(trained)
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge()  # peft's own merge: W + (alpha / r) B A
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(1, 4, 4, 6, generator=g), torch.randn(1, 4, 4, 6, generator=g)
    text, t = torch.randn(1, 5, 24, generator=g), torch.tensor([600.0])
    with torch.no_grad():
        want, plain = merged(x, text, t, ref_latents=ref), base(x, text, t, ref_latents=ref)
        load_lora(base, tmp_path)
        got = base(x, text, t, ref_latents=ref)
    assert (want - plain).abs().max() > 0.1 * plain.abs().max()  # the LoRA really moves the output
    psnr = 10 * torch.log10(want.abs().max() ** 2 / torch.mean((got - want) ** 2))
    assert psnr >= 40, f"{psnr:.1f} dB from peft's merge"
