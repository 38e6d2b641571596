"""bench/edit_speed.py on the tiny model: it runs, times every stage, and our torch path matches the fp32 peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_edit_speed_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench/edit_speed.py"), "--variant", "tiny", "--backends", "peer", "torch"]
    cmd += ["--cfg", "on", "--steps", "3", "--work", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    peer, ours = report["results"]
    assert (peer["backend"], ours["backend"]) == ("peer", "torch")
    for r in (peer, ours):
        assert "error" not in r, r
        assert r["transformer_calls"] == 3
        assert r["peak_rss_mb"] > 0
        assert sum(r[f"{s}_s"] for s in ("llm", "vae_encode", "steps", "vae_decode")) <= r["end_to_end_s"]
    assert peer["llm_calls"] == 1 and ours["llm_calls"] == 0  # ours reads the prompt cache of the model folder
    # prompt cache + text K/V cache + threads change no pixel beyond float noise
    assert ours["psnr_vs_fp32_db"] == "inf" or ours["psnr_vs_fp32_db"] >= 40
    assert "| torch | on |" in proc.stdout


@pytest.mark.slow
def test_startup_bench_times_every_row_and_compares_the_pictures(tmp_path):
    out = tmp_path / "startup.json"
    cmd = [sys.executable, str(ROOT / "bench/startup.py"), "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["what"]: row for row in report["rows"]}
    expected = {'python -c "import torch"', "sanaedit edit (default: the ONNX export)", "sanaedit serve (ready)"}
    assert expected <= set(rows)
    assert all(row["median_s"] > 0 for row in rows.values())
    assert report["psnr_default_vs_torch_db"] >= 30


@pytest.mark.slow
def test_in_browser_bench_times_the_page_beside_the_cli(tmp_path):
    from tests.conftest import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    out = tmp_path / "in-browser.json"
    cmd = [sys.executable, str(ROOT / "bench/in_browser.py"), "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["cli_end_to_end_s"]["median"] > 0
    static, served = report["browser"]["static, 1 thread"], report["browser"]["sanaedit serve, 2 threads"]
    assert (static["threads"], served["threads"]) == (1, 2)  # isolation headers: threads; a static server: one
    for row in (static, served):
        assert 0 < row["page_edit_s"]["median"] < row["navigation_to_result_s"]["median"]
        assert row["stage_denoise_s"]["median"] > 0
    assert report["psnr_static_vs_cli_db"] >= 30 and report["psnr_served_vs_cli_db"] >= 30
