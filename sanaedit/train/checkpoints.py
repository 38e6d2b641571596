"""Atomic training checkpoints: `<stage_dir>/checkpoints/step-NNNNNNNN`, accelerate's `save_state` (model,
optimizer, RNG, and the objects registered with it: our LR scheduler and EMA) plus `trainer.json` (the step
counters). A checkpoint is written to a temporary folder and renamed when complete: it is whole or absent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

STATE_FILE = "trainer.json"


class Progress(NamedTuple):
    """Where a run is: optimizer steps, micro-steps (the data/draw stream position) and samples skipped."""

    step: int = 0
    micro_step: int = 0
    skipped: int = 0


def checkpoint_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / "checkpoints"


def latest_checkpoint(stage_dir: Path) -> Path | None:
    ckpts = sorted(checkpoint_dir(stage_dir).glob("step-*"))
    ckpts = [c for c in ckpts if (c / STATE_FILE).is_file()]
    return ckpts[-1] if ckpts else None


def remove_half_written(stage_dir: Path) -> None:
    """Temporary folders of an earlier run killed mid-save (a run owns its stage folder, so none is live)."""
    for stale in checkpoint_dir(stage_dir).glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(accel, stage_dir: Path, progress: Progress, stage_name: str, keep: int) -> Path:
    """Save on every process (collective), write and rename on the main one; keep the `keep` newest (<= 0: all)."""
    final = checkpoint_dir(stage_dir) / f"step-{progress.step:08d}"
    tmp = final.with_name(f".{final.name}.tmp")
    main = accel.is_main_process
    if main:
        remove_half_written(stage_dir)
    accel.wait_for_everyone()
    accel.save_state(str(tmp))
    accel.wait_for_everyone()
    if main:
        (tmp / STATE_FILE).write_text(json.dumps({**progress._asdict(), "stage": stage_name}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # a checkpoint is complete or absent, never half-written
        old = sorted(checkpoint_dir(stage_dir).glob("step-*"))[:-keep] if keep > 0 else []
        for c in old:
            shutil.rmtree(c, ignore_errors=True)
    accel.wait_for_everyone()
    return final


def load_checkpoint(accel, stage_dir: Path) -> tuple[Path | None, Progress]:
    """Restore the newest checkpoint into accelerate's objects; (None, Progress()) when there is none."""
    if accel.is_main_process:
        remove_half_written(stage_dir)
    accel.wait_for_everyone()
    ckpt = latest_checkpoint(stage_dir)
    if ckpt is None:
        return None, Progress()
    accel.load_state(str(ckpt))
    state = json.loads((ckpt / STATE_FILE).read_text())
    return ckpt, Progress(state["step"], state["micro_step"], state["skipped"])
