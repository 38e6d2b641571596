"""The loss that trains is the tested one: a training step computes exactly `flow_matching_loss` through
`FlowModel` (the sampler's velocity function) on the step's own draws."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sanaedit.core.flow
from sanaedit.core.flow import flow_matching_loss
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.config import TrainSettings
from sanaedit.train.data import ManifestDataset, collate
from sanaedit.train.loop import train
from sanaedit.train.parts import TrainParts
from sanaedit.train.sampler import StreamBatches, first_position, sample_draws
from sanaedit.train.stages import get_stage


@pytest.fixture()
def triples(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"t{i}.png")
        lines.append(json.dumps({"source": f"s{i}.png", "target": f"t{i}.png", "prompt": f"edit {i % 2}"}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_train_parts_loss_is_the_flow_objective_through_the_sampler_velocity(tiny_model_dir, triples):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    parts = TrainParts(pipe, get_stage("stage3"))
    res = pipe.config.resolution
    batch = collate([ManifestDataset(triples, resolution=res)[i] for i in (0, 1)])
    size = res // pipe.flow.vae_scale
    draws = [sample_draws(0, k, (pipe.flow.latent_channels, size, size), TrainSettings()) for k in (0, 1)]
    t, noise = torch.cat([d[0] for d in draws]), torch.stack([d[1] for d in draws])
    loss = parts(batch, noise, t)
    with torch.no_grad():
        x0, ref = pipe.flow.encode(batch["target"]), pipe.flow.encode(batch["source"])
        hidden, mask = pipe.text_encoder.condition(pipe.text_encoder.llm_features(batch["prompt"]))
        velocity = pipe.flow.sampling_velocity(hidden, mask, ref)  # what the sampler integrates (no CFG)
        expected = flow_matching_loss(velocity, x0, noise, t)
    assert torch.equal(loss.detach(), expected)


def test_a_training_step_loss_is_flow_matching_loss_on_its_draws(tmp_path, tiny_model_dir, triples, monkeypatch):
    calls = []
    original = sanaedit.core.flow.flow_matching_loss

    def recorded(velocity, x0, noise, t):
        loss = original(velocity, x0, noise, t)
        calls.append({"x0": x0.detach().clone(), "noise": noise.clone(), "t": t.clone(), "loss": float(loss.detach())})
        return loss

    monkeypatch.setattr(sanaedit.core.flow, "flow_matching_loss", recorded)
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "seed": 3,
        "model": {"from": str(tiny_model_dir)},
        "data": {"manifest": str(triples)},
        "train": {"steps": 2, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3},
        "log": {"every": 1, "progress": False},
        "checkpoint": {"every": 0},
    }
    train(cfg)
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and [r["loss"] for r in log] == [c["loss"] for c in calls]
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    res = pipe.config.resolution
    data = ManifestDataset(triples, resolution=res)
    size = res // pipe.flow.vae_scale
    for micro, (call, indices) in enumerate(zip(calls, StreamBatches(len(data), 2, 3, 0, 2))):
        first = first_position(micro, 2)
        draws = [sample_draws(3, first + j, (pipe.flow.latent_channels, size, size), TrainSettings()) for j in (0, 1)]
        assert torch.equal(call["t"], torch.cat([d[0] for d in draws]))
        assert torch.equal(call["noise"], torch.stack([d[1] for d in draws]))
        if micro == 0:  # the weights have not moved yet: the targets' latents are the starting model's
            with torch.no_grad():
                x0 = pipe.flow.encode(torch.stack([data[i]["target"] for i in indices]))
            assert torch.equal(call["x0"], x0)


def test_autoencoder_stage_loss_is_weighted_reconstruction(tiny_model_dir, triples):
    from sanaedit.train.config import Reconstruction

    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    parts = TrainParts(pipe, get_stage("autoencoder"), Reconstruction(l1=2.0, mse=0.5))
    pixels = collate([ManifestDataset(triples, kind="images", resolution=pipe.config.resolution)[0]])["target"]
    with torch.no_grad():
        recon = pipe.vae(pixels).sample.float()
        expected = 2.0 * torch.nn.functional.l1_loss(recon, pixels) + 0.5 * torch.nn.functional.mse_loss(recon, pixels)
        assert torch.equal(parts({"target": pixels}), expected)
    assert Path(tiny_model_dir).is_dir()
