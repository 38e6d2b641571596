"""Hostile conditions for the CLI and folder edits (issue 11): no raw tracebacks, and nothing vanishes from a batch.

Numbered as the issue: 8 raw tracebacks (unwritable outputs refused before the model loads, any OSError or
MemoryError one line, a full disk stopping the batch with what was not attempted, a real EFBIG through the CLI),
11 batch reporting (FIFOs, devices, link loops, broken links and unreadable folders reported, not skipped).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanaedit.apps.batch import edit_folder
from sanaedit.apps.cli import main
from sanaedit.image.io import (
    save_image_atomic,
)
from tests.conftest import flip


# ---------------------------------------------------------------------------------------------- 8. raw tracebacks
def test_8_unwritable_outputs_fail_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import sanaedit.load

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sanaedit.load, "load_pipeline", no_model)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    (tmp_path / "file").write_text("x")
    cases = [
        (["edit", str(photos), "-o", str(tmp_path / "file")], "is a file, not a folder"),  # -o existing_file
        (["edit", str(photos / "a.png"), "-o", str(tmp_path / "file" / "x.png")], "is a file, not a folder"),
    ]
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(tmp_path / "ro")))
    (tmp_path / "ro").mkdir()
    cases.append((["edit", str(photos), "-o", str(tmp_path / "ro" / "out")], "cannot write there"))
    for args, words in cases:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_8_any_oserror_or_memoryerror_reaching_the_cli_is_one_line(monkeypatch, capsys, tmp_path):
    import sanaedit.apps.cli.edit as edit_cli

    for raised, words in (
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), "/data/out: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (MemoryError(), "out of memory"),
    ):

        def boom(args, raised=raised):
            raise raised

        monkeypatch.setattr(edit_cli, "run", boom)
        assert main(["edit", "x.jpg", "-o", str(tmp_path / "y.png")]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_8_a_full_disk_stops_the_batch_and_lists_what_was_not_attempted(tmp_path, monkeypatch):
    import sanaedit.apps.batch as batch

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(src / f"{i}.png")
    writes = []

    def save(image, path):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path.parent / ".2.png.1.abcdefgh@h.tmp"))
        return save_image_atomic(image, path)

    monkeypatch.setattr(batch, "save_image_atomic", save)
    edits = []
    summary = edit_folder(lambda im: edits.append(1) or im, src, tmp_path / "out", progress=False)
    assert [p.name for p in summary.done] == ["0.png"] and len(edits) == 2  # no edit after the disk filled
    reasons = dict(summary.failed)
    assert reasons[src / "1.png"].endswith(
        "cannot write " + str(tmp_path / "out" / "1.png") + ": No space left on device"
    )
    assert all("not attempted" in reasons[src / f"{i}.png"] and "--resume" in reasons[src / f"{i}.png"] for i in (2, 3))


@pytest.mark.slow  # a real EFBIG (RLIMIT_FSIZE) through the CLI in a subprocess: ~15 s
def test_8_efbig_through_the_real_cli_is_one_line_per_file(tiny_model_dir, tmp_path):
    import resource

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "sanaedit.apps.cli", "edit", str(src), "-o", str(out), "--model", str(tiny_model_dir)]
        + ["--steps", "1", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("File too large") == 3 and "done: 0 written" in done.stderr
    assert not [p for p in out.iterdir()]  # no partial output, no temporary left


# ------------------------------------------------------------------------------------------- 11. batch reporting
def test_11_nothing_vanishes_from_the_summary(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "good.png")
    os.mkfifo(src / "pipe.png")
    os.mkfifo(src / "pipe_without_suffix")
    os.symlink("/dev/null", src / "device.jpg")
    os.symlink(src / "loop.jpg", src / "loop.jpg")
    os.symlink(src / "gone.png", src / "dangling.png")
    os.symlink(src / "sub", src / "linked_folder")
    summary = edit_folder(flip, src, tmp_path / "out", recursive=True, progress=False)
    reasons = {p.name: reason for p, reason in summary.failed}
    assert [p.name for p in summary.done] == ["good.png"]
    assert "FIFO" in reasons["pipe.png"] and "device" in reasons["device.jpg"]
    assert "link loop" in reasons["loop.jpg"] and "broken symbolic link" in reasons["dangling.png"]
    assert sorted(p.name for p in summary.ignored) == ["linked_folder", "pipe_without_suffix"]
    assert "2 other file(s) ignored" in summary.report()


def test_11_unreadable_folders_are_reported_not_silent(tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "a.png")
    real_scandir = os.scandir
    denied = {src / "locked"}

    def scandir(path="."):  # chmod 000 does not stop root: the OS's answer, simulated
        if Path(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = edit_folder(flip, src, tmp_path / "out", recursive=True, progress=False)
    assert [p.name for p in summary.done] == ["a.png"]
    assert summary.failed == [(src / "locked", f"{src / 'locked'}: cannot read this folder (Permission denied)")]
    denied.add(src)
    with pytest.raises(ValueError, match="cannot read this folder"):
        edit_folder(flip, src, tmp_path / "out2", progress=False)
    import sanaedit.load

    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: lambda image, **kw: image)
    assert main(["edit", str(src), "-o", str(tmp_path / "out3"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "cannot read this folder" in err and "0 written" not in err
