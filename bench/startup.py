"""What a new user waits for with the bundled model, end to end, against `python -c "import torch"` in one run.

    python bench/startup.py --json bench/results/startup-bundled-DATE.json
    python bench/startup.py --base-python /tmp/basevenv/bin/python     # the torch-free rows in a base-only install too

Each row is a fresh process (`python -m sanaedit.apps.cli ...`, what the `sanaedit` console script runs), timed
from spawn to exit (to the first `/api/health` answer for `serve`), peak RSS from the OS (`wait4`); the rows are
interleaved, --repeats rounds, and the table gives the median and the minimum. Every edit writes the sample photo's
comic (451x300); the ratio column divides by the median of `import torch` in the same run, so machine load moves
both. The last lines compare the default edit's picture with `--backend torch`'s (PSNR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "sanaedit/assets/sample.jpg"
sys.path.insert(0, str(ROOT / "bench"))

from edit_speed import psnr  # noqa: E402
from serve_hostile import free_port  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a process run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def timed_serve(python: str, results: Path) -> tuple[float, float]:
    """(seconds from spawn to the first answer of /api/health, peak RSS MB) of `sanaedit serve` on the bundled model."""
    port = free_port()
    cmd = [python, "-m", "sanaedit.apps.cli", "serve", "--port", str(port), "-o", str(results)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {proc.stderr.read().decode()[-500:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.02)
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        _, _, usage = os.wait4(proc.pid, 0)
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--base-python", help="a Python whose venv has the base install only (no torch): its rows too")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    full = sys.executable
    cli = [full, "-m", "sanaedit.apps.cli"]
    edit = [*cli, "edit", str(PHOTO), "--seed", "0", "-q", "-o"]
    rows: dict[str, list[str]] = {
        'python -c "import torch"': [full, "-c", "import torch"],
        "sanaedit --version": [*cli, "--version"],
        "sanaedit edit --help": [*cli, "edit", "--help"],
        "sanaedit edit, missing photo": [*cli, "edit", str(work / "missing.jpg"), "-o", str(work / "x.png")],
        "sanaedit edit (default: the ONNX export)": [*edit, str(work / "default.png")],
        "sanaedit edit --backend torch": [*edit, str(work / "torch.png"), "--backend", "torch"],
    }
    if args.base_python:
        rows["base install: sanaedit edit"] = [
            args.base_python, "-m", "sanaedit.apps.cli", "edit", str(PHOTO), "--seed", "0", "-q", "-o",
            str(work / "base.png"),
        ]  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in [*rows, "sanaedit serve (ready)"]}
    for round_ in range(args.repeats):
        print(f"round {round_ + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for name, cmd in rows.items():
            if "missing" in name:
                proc = subprocess.run(cmd, capture_output=True)
                assert proc.returncode == 1, proc.stderr
                start = time.perf_counter()
                subprocess.run(cmd, capture_output=True)
                times[name].append((time.perf_counter() - start, 0.0))
                continue
            times[name].append(timed(cmd))
        times["sanaedit serve (ready)"].append(timed_serve(full, work / "results"))
    reference = statistics.median(t for t, _ in times['python -c "import torch"'])
    report = {"machine": f"{os.cpu_count()} CPUs", "repeats": args.repeats, "rows": []}
    print("\n| what | median s | min s | / import torch | peak RSS MB |\n|---|---|---|---|---|")
    for name, got in times.items():
        walls = [t for t, _ in got]
        row = {
            "what": name,
            "median_s": round(statistics.median(walls), 3),
            "min_s": round(min(walls), 3),
            "ratio_to_import_torch": round(statistics.median(walls) / reference, 2),
            "peak_rss_mb": round(max(r for _, r in got)),
        }
        report["rows"].append(row)
        rss = row["peak_rss_mb"] or "-"
        print(f"| {name} | {row['median_s']} | {row['min_s']} | {row['ratio_to_import_torch']} | {rss} |")
    report["psnr_default_vs_torch_db"] = round(psnr(work / "default.png", work / "torch.png"), 2)
    print(f"\ndefault (ONNX export) vs --backend torch: {report['psnr_default_vs_torch_db']} dB")
    if args.base_python:
        report["psnr_base_vs_default_db"] = round(psnr(work / "base.png", work / "default.png"), 2)
        print(f"base install vs full install, default edit: {report['psnr_base_vs_default_db']} dB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
