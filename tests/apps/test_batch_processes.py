"""A folder edit split across processes (issue 12, item 6): 2 CPU processes under torchrun (gloo) against one process.

Both runs use --threads 1 (the same arithmetic, and no oversubscribed CPU); every launch has a timeout (no hang)."""

import os
import re
import signal
import subprocess
import sys
from subprocess import PIPE

import pytest
import torch
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.apps.processes import Processes, launched_count
from tests.conftest import gradient

LAUNCH_TIMEOUT_S = 180
EDITING = re.compile(r"process (\d) of 2: editing (\S+)")  # the -v line of each edit, with its process


@pytest.fixture
def one_process(monkeypatch):
    """`sanaedit.apps.cli.main` as a plain one-process run; this session's torch threads as they were afterwards."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield main
    torch.set_num_threads(threads)


def launch_two(*args, script=None):
    """`torchrun --standalone --nproc_per_node 2 -m sanaedit.apps.cli ARGS` (or SCRIPT ARGS) on the CPU."""
    target = [str(script)] if script else ["-m", "sanaedit.apps.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    with subprocess.Popen(cmd, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its workers: none left behind
            launcher.communicate()
            raise
    return subprocess.CompletedProcess(cmd, launcher.returncode, stdout, stderr)


def outputs(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_share_is_disjoint_and_the_shares_cover_everything(monkeypatch):
    items = list(range(11))
    shares = [Processes(i, 3).share(items) for i in range(3)]
    assert sorted(x for share in shares for x in share) == items and shares[1] == [1, 4, 7, 10]
    assert not Processes().many and Processes().share(items) == items
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_count() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_count() == 4


@pytest.mark.slow  # 2 launches of 2 processes (~20 s each on a busy 2-core CPU)
def test_two_processes_write_what_one_process_writes(tiny_model_dir, tmp_path, one_process, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo = gradient(40, 28)
    photo.save(src / "p0.jpg")  # done before: skipped with --resume
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "p1.png")
    photo.resize((24, 36)).save(src / "p2.jpg")
    photo.rotate(90, expand=True).save(src / "sub" / "p3.png")
    photo.save(src / "a.jpg")  # a.jpg and a.png collide: a.jpg.png, a.png.png
    photo.convert("L").save(src / "a.png")
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    for out in (out1, out2):
        out.mkdir()
        (out / "p0.png").write_bytes(b"an earlier run's output")
    common = ["--model", str(tiny_model_dir), "--steps", "1", "--threads", "1", "-r", "--resume"]

    assert one_process(["edit", str(src), "-o", str(out1), *common]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary == "done: 5 written, 1 skipped (already done), 0 failed"

    run = launch_two("edit", str(src), "-o", str(out2), *common, "-v")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == summary  # process 0's, once, counting every process's work
    assert outputs(out2) == outputs(out1)  # the same files, byte for byte
    assert sorted(outputs(out2)) == ["a.jpg.png", "a.png.png", "p0.png", "p1.png", "p2.png", "sub/p3.png"]
    edited = EDITING.findall(run.stderr)
    by_process = {rank: sorted(path for r, path in edited if r == rank) for rank in ("0", "1")}
    assert len(by_process["0"]) == 3 and len(by_process["1"]) == 2  # every 2nd file of the 5 left, from the i-th
    assert sorted(path for _, path in edited) == sorted(
        str(src / name) for name in ("a.jpg", "a.png", "p1.png", "p2.jpg", "sub/p3.png")
    )  # each edited exactly once, by one process; p0 (already done) by none


@pytest.mark.slow  # 2 launches of 2 processes
def test_failures_in_one_process_are_reported_once_and_nothing_hangs(tiny_model_dir, tmp_path, one_process, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "c.png", "d.jpg"):
        gradient(32, 24).save(src / name)
    (src / "b.jpg").write_text("not an image")  # the 2nd file: process 1's
    common = ["--model", str(tiny_model_dir), "--steps", "1", "--threads", "1"]
    assert one_process(["edit", str(src), "-o", str(tmp_path / "out1"), *common]) == 1
    err = capsys.readouterr().err
    report = err[err.index("done:") :].strip()  # after the progress bar
    assert report.startswith("done: 3 written, 0 skipped (already done), 1 failed") and "b.jpg: not an image" in report

    run = launch_two("edit", str(src), "-o", str(tmp_path / "out2"), *common, "-v")
    assert ("1", str(src / "b.jpg")) in EDITING.findall(run.stderr)  # the broken photo was process 1's
    assert run.returncode != 0 and run.stderr.count("done: 3 written") == 1
    assert report in run.stderr  # the same summary, failures and all, from process 0
    assert outputs(tmp_path / "out2") == outputs(tmp_path / "out1")

    # process 1 cannot load its model (a GPU out of memory, say): every process stops, nobody waits for it
    script = tmp_path / "fail_on_1.py"
    script.write_text(
        "import os, sys\n"
        "import sanaedit.load\n"
        "def load(*args, **kwargs):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('out of memory (simulated)')\n"
        "    return object()\n"
        "sanaedit.load.load_pipeline = load\n"
        "from sanaedit.apps.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    run = launch_two("edit", str(src), "-o", str(tmp_path / "out3"), *common, script=script)
    assert run.returncode != 0
    assert run.stderr.count("sanaedit edit: error: process 1 of 2: out of memory (simulated)") == 1, run.stderr[-3000:]
    assert not (tmp_path / "out3").exists()
