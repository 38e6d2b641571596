"""`sanaedit train controlnet --model.from=MODEL --data.photos=DIR ...`: a ControlNet trained beside the frozen model,
on edges computed from each photo, written as a folder diffusers' `SanaControlNetModel.from_pretrained` reads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import SanaControlNetModel
from safetensors.torch import load_file

from sanaedit.apps.cli import main
from sanaedit.train.config import load_config
from sanaedit.train.loop import train
from sanaedit.train.sampler import control_draws
from tests.conftest import gradient


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(80, 56), (48, 64), (64, 64)]):
        gradient(*size).rotate(30 * i).save(folder / f"p{i}.png")
    return folder


def frozen(model_dir) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "transformer" / "diffusion_pytorch_model.safetensors")


def test_the_command_writes_a_controlnet_diffusers_reads(tiny_model_dir, photos, tmp_path, capsys):
    out = tmp_path / "run"
    before = frozen(tiny_model_dir)
    code = main([
        "train", "controlnet", f"--model.from={tiny_model_dir}", f"--data.photos={photos}", "--train.steps=3",
        "--output-dir", str(out), "--train.batch_size=2", "--train.controlnet.targets=comic", "--log.progress=false",
    ])  # fmt: skip
    assert code == 0
    assert f"--controlnet {out / 'controlnet'} --control-image edges" in capsys.readouterr().out
    controlnet = SanaControlNetModel.from_pretrained(out / "controlnet")
    assert controlnet.config.num_layers == 1  # at most the tiny DiT's blocks - 1
    assert all(p.abs().sum() > 0 for n, p in controlnet.named_parameters() if n.startswith("controlnet_blocks."))
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    # the model itself is untouched: the stage writes only the ControlNet
    assert all(torch.equal(v, before[k]) for k, v in frozen(tiny_model_dir).items())
    assert not (out / "model").exists()


def test_teacher_targets_and_resume(tiny_model_dir, photos, tmp_path):
    """The teacher's own edits as targets (built once, reused); a run resumed from its checkpoint ends where an
    uninterrupted one does."""

    def config(out, steps):
        return {
            "output_dir": str(out), "device": "cpu", "model": {"from": str(tiny_model_dir)},
            "data": {"photos": str(photos), "pre_encode": True},
            "train": {"stage": "controlnet", "steps": steps, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3,
                      "controlnet": {"dropout": 0.5}},
            "log": {"every": 1, "progress": False}, "checkpoint": {"every": 2, "keep": 1},
        }  # fmt: skip

    whole = train(config(tmp_path / "whole", 4))
    manifest = (tmp_path / "whole" / "data" / "train" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 3 and json.loads(manifest[0])["prompt"]  # the teacher's own prompt
    # a run killed after its step-2 checkpoint: what is left of it is that checkpoint
    shutil.copytree(tmp_path / "whole", tmp_path / "killed", ignore=shutil.ignore_patterns("controlnet", "done.json"))
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000002"]
    resumed = train(config(tmp_path / "killed", 4), resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4]  # it went on from step 2
    a = load_file(whole / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conditioning_dropout_is_drawn_per_sample_and_settings_are_checked(tiny_model_dir, photos):
    drops = [control_draws(0, position, 0.5) for position in range(200)]
    assert drops == [control_draws(0, position, 0.5) for position in range(200)]
    assert 60 < sum(drops) < 140 and not any(control_draws(0, p, 0.0) for p in range(200))
    base = {"model": {"from": str(tiny_model_dir)}, "data": {"photos": str(photos)}, "train": {"stage": "controlnet"}}
    with pytest.raises(ValueError, match="train.controlnet.dropout"):
        load_config({**base, "train": {"stage": "controlnet", "controlnet": {"dropout": 2}}})
    with pytest.raises(ValueError, match="trains the ControlNet only"):
        load_config({**base, "train": {"stage": "controlnet", "trainable": ["transformer"]}})
    with pytest.raises(ValueError, match="one data source"):
        load_config({**base, "data": {"photos": str(photos), "build": "comic"}})
    with pytest.raises(ValueError, match="must be the last stage"):
        train({**base, "stages": [{"train": {"stage": "controlnet"}}, {"train": {"stage": "stage3"}}]})
