"""`--processes N` (apps/launch.py): the processes start as torchrun --standalone starts them, and a failure ends in
one line per reason, not torchrun's 40-line ChildFailedError."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace

import pytest

from sanaedit.apps.cli import processes_asked, without_processes
from tests.conftest import gradient


def sanaedit(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "sanaedit.apps.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=240)


def test_processes_are_taken_from_the_line_and_from_trains_overrides():
    assert without_processes(["edit", "a", "--processes", "2", "-o", "x"]) == ["edit", "a", "-o", "x"]
    assert without_processes(["train", "c.yaml", "--processes=3", "--train.steps=1"]) == [
        "train",
        "c.yaml",
        "--train.steps=1",
    ]
    args = Namespace(processes=1, overrides=["--train.steps=1", "--processes", "2"])
    assert processes_asked(args) == 2 and args.overrides == ["--train.steps=1"]
    with pytest.raises(Exception, match="integer"):
        processes_asked(Namespace(processes=1, overrides=["--processes=two"]))


@pytest.mark.slow  # 2 launches of 2 processes (~20 s each on a busy 2-core CPU)
def test_a_failing_multi_process_run_ends_in_one_line_and_a_good_one_edits_every_photo(tiny_model_dir, tmp_path):
    run = sanaedit("train", "no-such-config.yaml", "--processes", "2", cwd=tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("sanaedit train: error: training config not found: no-such-config.yaml")
    assert lines[0].endswith("of 2)") and ("(process 0" in lines[0] or "(process 1" in lines[0])

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        gradient(32 + 8 * i, 24).save(src / f"p{i}.png")
    run = sanaedit("edit", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--steps", "1",
                   "--processes", "2", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "done: 3 written, 0 skipped (already done), 0 failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
