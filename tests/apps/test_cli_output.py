"""What `sanaedit edit` writes where (issue 30): stdout carries only the result line, even on MNN (whose C library
prints on stdout when it loads); -v adds debug lines on stderr: what the plan chose, the model, each stage's time."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from sanaedit.apps.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _photo(tmp_path: Path) -> Path:
    photo = tmp_path / "p.png"
    Image.new("RGB", (24, 16), "red").save(photo)
    return photo


def test_v_adds_debug_lines_the_default_run_does_not_show(tiny_model_dir, tmp_path, capsys):
    base = ["edit", str(_photo(tmp_path)), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir)]
    assert main([*base, "--steps", "1"]) == 0
    default = capsys.readouterr()
    assert main(["-v", *base, "--steps", "1"]) == 0
    verbose = capsys.readouterr()
    assert verbose.out == default.out  # stdout: the result line either way
    added = [line for line in verbose.err.splitlines() if line not in default.err.splitlines()]
    for start in ("model: ", "runs on: torch", "autoencoder: ", "sampling: ", "load: ", "encode: ", "decode: "):
        assert any(line.startswith(start) for line in added), (start, verbose.err)
    assert any("denoise: " in line for line in added)  # after the bar's carriage returns on the same line
    assert any(line.startswith("write ") for line in added)


def test_an_mnn_edit_prints_only_the_result_line_on_stdout(tiny_mnn_release, tmp_path):
    """MNN's native library printf's "The device supports: ..." on file descriptor 1 when it loads: sent to stderr."""
    out = tmp_path / "o.png"
    argv = ["edit", str(_photo(tmp_path)), "-o", str(out), "--model", str(tiny_mnn_release), "--steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "sanaedit.apps.cli", *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out} (24x16)\n", done.stdout
