"""The training loop on the tiny model: loss goes down, frozen parts stay frozen, resume is bit-exact, DDP runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sanaedit.train.config import load_config
from sanaedit.train.loop import train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Eight editing triples: smooth random colour fields and a fixed mapping of them (colour inversion)."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        small = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        src = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
        src.save(root / f"s{i}.png")
        Image.fromarray(255 - np.asarray(src)).save(root / f"t{i}.png")
        lines.append(json.dumps({"source": f"s{i}.png", "target": f"t{i}.png", "prompt": "invert the colours"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def config(out, model_dir, data, **train):
    return {
        "output_dir": str(out),
        "device": "cpu",
        "model": {"from": str(model_dir)},
        "data": {"manifest": str(data)},
        "train": {"stage": "stage3", "steps": 6, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, **train},
        "log": {"every": 1, "progress": False},
        "checkpoint": {"every": 3, "keep": 2},
    }


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def weights(model_dir, component):
    folder = Path(model_dir) / component
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_loss_goes_down(tmp_path, tiny_model_dir, pairs):
    cfg = config(tmp_path / "run", tiny_model_dir, pairs, steps=60, batch_size=4, lr=3e-3, t_sampling="uniform")
    cfg["checkpoint"]["every"] = 0
    train(cfg)
    curve = losses(tmp_path / "run")
    assert len(curve) == 60
    assert np.mean(curve[-10:]) < 0.8 * np.mean(curve[:10])


@pytest.mark.parametrize(
    "stage, changed, frozen",
    [
        ("stage1", ["connector", "projector"], ["transformer", "vae", "llm"]),
        ("stage3", ["connector", "projector", "transformer"], ["vae", "llm"]),
        ("autoencoder", ["vae"], ["transformer", "connector", "projector", "llm"]),
    ],
)
def test_frozen_parts_stay_bit_identical(tmp_path, tiny_model_dir, pairs, stage, changed, frozen):
    out = train(config(tmp_path / "run", tiny_model_dir, pairs, stage=stage, steps=3, lr=1e-2))
    for name in frozen:
        before, after = weights(tiny_model_dir, name), weights(out, name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{stage}: frozen {name} changed"
    for name in changed:
        before, after = weights(tiny_model_dir, name), weights(out, name)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{stage}: {name} did not train"
    queries = [load_file(Path(d) / "meta_queries.safetensors")["meta_queries"] for d in (tiny_model_dir, out)]
    assert torch.equal(*queries) == (stage not in ("stage1", "stage2", "stage3"))


def test_resume_continues_bit_exactly(tmp_path, tiny_model_dir, pairs):
    cfg = config(tmp_path / "run", tiny_model_dir, pairs, optimizer="came", warmup=4, ema=0.9)
    train(cfg)
    full = losses(tmp_path / "run")
    # lose everything after the step-3 checkpoint, as a kill would
    run = tmp_path / "run"
    for p in ("model", "done.json", "log.jsonl"):
        path = run / p
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    stale = run / "checkpoints" / ".step-00000005.tmp"  # what a kill -9 during a save leaves
    stale.mkdir()
    (stale / "half-written.bin").write_bytes(b"x")
    train(cfg, resume=True)
    assert losses(run) == full[3:]  # steps 4..6, exactly
    assert not stale.exists()  # cleaned up by the next save


def test_pre_encoded_latents_match_online(tmp_path, tiny_model_dir, pairs):
    online = config(tmp_path / "a", tiny_model_dir, pairs, steps=3)
    cached = config(tmp_path / "b", tiny_model_dir, pairs, steps=3, trainable=["connector", "transformer"])
    online["train"]["trainable"] = ["connector", "transformer"]
    cached["data"]["pre_encode"] = True
    train(online)
    train(cached)
    assert (tmp_path / "b/latents/cache.json").is_file()
    np.testing.assert_allclose(losses(tmp_path / "a"), losses(tmp_path / "b"), rtol=1e-4)


def test_accumulation_bf16_checkpointing_ema_samples(tmp_path, tiny_model_dir, pairs):
    cfg = config(tmp_path / "run", tiny_model_dir, pairs, steps=2, grad_accum=2, mixed_precision="bf16")
    cfg["train"].update(gradient_checkpointing=True, ema=0.5, text_dropout=0.5)
    cfg["sample"] = {"every": 2, "count": 1, "steps": 2}
    out = train(cfg)
    assert len(losses(tmp_path / "run")) == 2
    assert (tmp_path / "run/samples/step-00000002.png").is_file()
    from sanaedit.pipeline import SanaEditPipeline

    pipe = SanaEditPipeline.from_pretrained(out)
    assert pipe(Image.open(pairs / "s0.png"), num_inference_steps=2).images[0].size == (64, 64)


def test_config_overrides_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "train: {steps: 5}\nstages: [{train: {stage: stage1}}, {train: {stage: stage3}}]\n"
    )
    stages = load_config(tmp_path / "c.yaml", ["--train.lr=0.5", "--stages.1.train.batch_size=3"])
    assert [s.train.stage for s in stages] == ["stage1", "stage3"]
    assert all(s.train.lr == 0.5 and s.train.steps == 5 for s in stages)
    assert [s.train.batch_size for s in stages] == [4, 3]
    assert [s.stage_dir for s in stages] == [Path("runs/train/0-stage1"), Path("runs/train/1-stage3")]
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        load_config(tmp_path / "c.yaml", ["--train.stepz=1"])
    with pytest.raises(ValueError, match="not of the form"):
        load_config(tmp_path / "c.yaml", ["--train.steps"])
    with pytest.raises(ValueError, match="the LLM is always frozen"):
        train({"train": {"trainable": ["llm"]}, "model": {"variant": "tiny"}})


def _cli(*args, threads=1, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([*args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path, tiny_model_dir, pairs):
    cfg = config(tmp_path / "ref", tiny_model_dir, pairs, steps=20, optimizer="came")
    cfg["checkpoint"]["every"] = 4
    train(cfg)
    reference = losses(tmp_path / "ref")
    cfg["output_dir"] = str(tmp_path / "run")
    path = _yaml(tmp_path / "c.yaml", cfg)
    threads = torch.get_num_threads()  # same float reductions as the in-process reference run
    proc = _cli(sys.executable, "-m", "sanaedit.apps.cli.train", str(path), threads=threads)
    deadline = time.time() + 120
    while not list((tmp_path / "run/checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run/done.json").exists(), "the run finished before it was killed"
    resumed = _cli(sys.executable, "-m", "sanaedit.apps.cli.train", str(path), "--resume", threads=threads)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in log}  # the resumed run rewrote steps after its checkpoint
    assert "resumed from" in output
    assert [by_step[s] for s in range(1, 21)] == reference


@pytest.mark.slow
def test_resume_reuses_the_pre_encoded_latents(tmp_path, tiny_model_dir, pairs, monkeypatch):
    """`--resume` finds the first run's cache (same data, same weights): nothing is encoded again, and it says so."""
    import sanaedit.train.loop as loop
    from sanaedit.train.parts import TrainParts

    cfg = config(tmp_path / "run", tiny_model_dir, pairs, steps=4, trainable=["connector", "transformer"])
    cfg["data"]["pre_encode"] = True
    train(cfg)
    cache = tmp_path / "run" / "latents"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    for p in ("model", "done.json"):  # lose the end of the run, as a kill would
        path = tmp_path / "run" / p
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    encoded, said = [], []
    monkeypatch.setattr(TrainParts, "encode_images", lambda self, pixels: encoded.append(pixels))
    monkeypatch.setattr(loop.logger, "info", said.append)
    train(cfg, resume=True)
    assert encoded == []
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert any(line.startswith("reused the pre-encoded 8 samples") for line in said), said


def test_ddp_two_processes_gloo(tmp_path, tiny_model_dir, pairs):
    """Two CPU processes (torchrun, gloo) through the same entry point; the global batch of 2 x 2 gives the
    losses a single process gets with batch 4 (same samples, gradients averaged across ranks)."""
    single = config(tmp_path / "one", tiny_model_dir, pairs, steps=4, batch_size=4)
    train(single)
    ddp = config(tmp_path / "two", tiny_model_dir, pairs, steps=4, batch_size=2)
    path = _yaml(tmp_path / "ddp.yaml", ddp)
    proc = _cli(
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
        "-m", "sanaedit.apps.cli.train", str(path),
    )  # fmt: skip
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert (tmp_path / "two/model/model_index.json").is_file()
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-4)


def test_multi_stage_final_model_is_written_atomically(tmp_path, tiny_model_dir, pairs, monkeypatch):
    """The final `<out>/model` of a multi-stage run replaces an older one only when the copy is complete."""
    import sanaedit.core.atomic as model_folder

    cfg = config(tmp_path / "run", tiny_model_dir, pairs, steps=1)
    cfg["checkpoint"] = {"every": 0, "keep": 1}
    cfg["stages"] = [{"train": {"stage": "stage1"}}, {"train": {"stage": "stage3"}}]
    final = tmp_path / "run" / "model"
    final.mkdir(parents=True)
    (final / "older-model.txt").write_text("still here")

    def copy_then_fail(src, dst, **kwargs):
        (Path(dst) / "transformer").mkdir()  # part of the new folder is written ...
        raise OSError("disk full")  # ... then the copy fails

    monkeypatch.setattr(model_folder.shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    assert [p.name for p in final.iterdir()] == ["older-model.txt"]  # the old model, whole
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".model.")]  # no temp folder left
    monkeypatch.undo()
    out = train(cfg, resume=True)  # both stages are done: only the copy runs
    assert out == final and (final / "model_index.json").is_file() and not (final / "older-model.txt").exists()


def test_ema_ramps_up_so_the_starting_weights_fade_and_resumes_where_it_was():
    """Weights that move away from their start for 1200 updates: at decay 0.999 without the ramp the average would
    still hold 0.999**1200 = 30% of the start; with it, nothing measurable. Its state carries the update count; a
    checkpoint from before the ramp (no count) continues at the full decay."""
    from sanaedit.train.ema import EMA

    param = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([param], 0.999)
    with torch.no_grad():
        param.fill_(1.0)
    for _ in range(1200):
        ema.update()
    assert ema.shadow[0].min() > 0.99
    state = ema.state_dict()
    assert state["updates"] == 1200
    resumed = EMA([param], 0.999)
    resumed.load_state_dict(state)
    assert resumed.updates == 1200 and torch.equal(resumed.shadow[0], ema.shadow[0])
    old = EMA([param], 0.5)
    old.load_state_dict({"decay": 0.5, "shadow": [torch.zeros(3)]})
    old.update()
    assert torch.allclose(old.shadow[0], torch.full((3,), 0.5))  # the full decay, not the ramp's 0.1
