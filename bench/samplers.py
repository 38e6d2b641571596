"""Steps for quality of each sampler on one model (default: the bundled one), on held-out photos.

    python bench/samplers.py runs/comic/data/eval --json bench/results/samplers-comic-DATE.json

Rows: Euler on the model's schedule and flow DPM-Solver++ (2M) on SANA's linear schedule, each at --steps; the
first row (Euler at the most steps) is the reference for "PSNR vs reference". Scores and timing as in
bench/fast_path.py (seed 0, model resolution, held-out images of EVAL_DIR/manifest.jsonl against the comic filter).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from family import BUNDLED, load_dit_edits  # noqa: E402
from fast_path import quality, speed  # noqa: E402

from sanaedit.train.evaluate import load_pairs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl (runs/comic/data/eval)")
    ap.add_argument("--model", default=str(BUNDLED), help="model folder (default: the bundled model)")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 10, 5, 3, 2], help="step counts")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (default: 5)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_dit_edits(args.model)
    steps = sorted(args.steps, reverse=True)
    rows: dict[str, tuple] = {}
    for n in steps:
        rows[f"euler, {n} steps"] = (pipe, {"num_inference_steps": n, "sampler": "euler"})
    for n in steps:
        rows[f"dpm, {n} steps"] = (pipe, {"num_inference_steps": n, "sampler": "dpm", "schedule": "linear"})
    pairs = load_pairs(args.eval_dir)
    results = {"quality": quality(rows, pairs), "speed": speed(rows, pairs[0][1], args.repeats)}
    results["setup"] = {"model": args.model, "held_out_images": len(pairs), "threads": args.threads}
    print("| sampler | PSNR dB | SSIM | edge F1 | PSNR vs reference | s/edit |\n|---|---|---|---|---|---|")
    for name, q in results["quality"].items():
        close = "(reference)" if q["psnr_vs_teacher"] is None else f"{q['psnr_vs_teacher']:.2f}"
        edit_s = results["speed"][name]["edit_s"]
        print(f"| {name} | {q['psnr']:.2f} | {q['ssim']:.3f} | {q['edge_f1']:.3f} | {close} | {edit_s:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
