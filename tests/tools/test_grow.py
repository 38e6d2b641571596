"""SANA-1.5 depth growth: the grown model edits exactly as the original until it is trained."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.tools.grow import grow_transformer


def test_new_blocks_start_as_the_identity(tiny_pipe):
    t = tiny_pipe.transformer
    grown = grow_transformer(t, t.config.num_layers + 3)
    assert grown.config.num_layers == t.config.num_layers + 3 and len(grown.transformer_blocks) == 5
    args = (
        torch.randn(2, t.config.out_channels, 4, 4),
        torch.randn(2, 5, t.config.caption_channels),
        torch.tensor([900.0, 100.0]),
        torch.ones(2, 5),
        torch.randn(2, t.config.out_channels, 4, 4),
    )
    with torch.no_grad():
        assert torch.equal(grown(*args), t(*args))  # bit for bit: each new branch adds exactly 0
    new = dict(grown.transformer_blocks[-1].named_parameters())
    assert not new["attn1.to_out.0.weight"].any() and not new["ff.conv_point.weight"].any()
    assert new["attn1.to_q.weight"].std() > 0  # the rest is open to training
    grown_state = grown.state_dict()
    for name, weight in t.state_dict().items():  # every original weight copied, blocks 0..N-1 included
        assert torch.equal(weight, grown_state[name]), name
    with pytest.raises(ValueError, match="already has"):
        grow_transformer(t, t.config.num_layers)


def test_grow_cli_writes_a_folder_that_edits_the_same_and_trains(tiny_model_dir, tmp_path):
    out = tmp_path / "grown"
    assert main(["grow", str(tiny_model_dir), "--layers", "4", "-o", str(out)]) == 0
    before, after = SanaEditPipeline.from_pretrained(tiny_model_dir), SanaEditPipeline.from_pretrained(out)
    assert after.transformer.config.num_layers == 4 and not after.text_encoder_loaded  # prompt cache kept
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    a = before(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    b = after(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert main(["grow", str(tiny_model_dir), "--layers", "1", "-o", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_training_continues_a_grown_model(tiny_model_dir, tmp_path, tiny_edit_pairs):

    from safetensors.torch import load_file

    from sanaedit.train.loop import train

    grown = tmp_path / "grown"
    assert main(["grow", str(tiny_model_dir), "--layers", "3", "-o", str(grown)]) == 0
    data = tiny_edit_pairs
    config = {
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "model": {"from": str(grown)},
        "data": {"manifest": str(data)},
        "train": {"stage": "stage3", "steps": 2, "batch_size": 2, "optimizer": "adamw", "lr": 1e-2},
        "log": {"progress": False},
        "checkpoint": {"every": 0},
    }
    out = train(config)
    key = "transformer_blocks.2.attn1.to_out.0.weight"  # a closed branch of a new block
    assert not load_file(grown / "transformer" / "diffusion_pytorch_model.safetensors")[key].any()
    assert load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")[key].any()  # opened by training


def test_the_help_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """`sanaedit grow --help`'s first example, on the bundled model, run as printed (its output in a scratch folder)."""
    with pytest.raises(SystemExit):
        main(["grow", "--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    example = next(line.split() for line in lines if line.startswith("sanaedit grow"))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the example's paths are the repository's
    out = tmp_path / "grown"
    argv = [str(out) if arg == example[example.index("-o") + 1] else arg for arg in example[1:]]
    assert main(argv) == 0
    assert SanaEditPipeline.from_pretrained(out).transformer.config.num_layers > 8
