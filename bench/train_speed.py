"""Training throughput (samples/s) through the real loop, with and without pre-encoded latents.

    python bench/train_speed.py                      # tiny, on CPU (seconds)
    python bench/train_speed.py --variants tiny sana-0.6b --steps 3 --batch-size 1

Two settings per variant, same data, same stage-3 step:
- online:      every step encodes source and target with the DC-AE and runs the LLM through trainable meta-queries
- pre-encoded: latents written to disk once by the frozen DC-AE, text features once by the frozen LLM + queries
               (the meta-queries are frozen in this setting: that is what makes their features cacheable)
The rate is taken over the steps after the first (warm-up excluded); pre-encoding time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_data(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        for kind in ("s", "t"):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{kind}{i}.png")
        lines.append(json.dumps({"source": f"s{i}.png", "target": f"t{i}.png", "prompt": f"edit number {i}"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run(variant: str, pre_encoded: bool, steps: int, batch: int, data: Path, out: Path, device: str) -> dict:
    from sanaedit.train.loop import train

    cfg = {
        "output_dir": str(out),
        "device": device,
        "model": {"variant": variant},
        "data": {"manifest": str(data), "pre_encode": pre_encoded},
        "train": {"stage": "stage3", "steps": steps + 1, "batch_size": batch, "optimizer": "came"},
        "log": {"every": 1, "progress": False},
        "checkpoint": {"every": 0},
    }
    if pre_encoded:
        cfg["train"]["trainable"] = ["connector", "projector", "transformer"]
    started = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - started
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # samples_per_s is cumulative from the loop's start: recover per-step times, drop the first (warm-up)
    elapsed = [r["step"] * batch / r["samples_per_s"] for r in log]
    rate = (len(elapsed) - 1) * batch / (elapsed[-1] - elapsed[0])
    return {"samples_per_s": rate, "wall_s_incl_setup": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["tiny"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu, or auto (a GPU when present)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sanaedit.models.variants import load_variant

    rows = []
    for variant in args.variants:
        res = load_variant(variant).resolution
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "data").mkdir()
            data = make_data(tmp / "data", max(args.batch_size * 2, 4), res)
            online = run(variant, False, args.steps, args.batch_size, data, tmp / "online", args.device)
            cached = run(variant, True, args.steps, args.batch_size, data, tmp / "cached", args.device)
        rows.append((variant, res, online, cached))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, stage 3\n")
    print("| variant | px | online samples/s | pre-encoded samples/s | speed-up |\n|---|---|---|---|---|")
    for variant, res, online, cached in rows:
        a, b = online["samples_per_s"], cached["samples_per_s"]
        print(f"| {variant} | {res} | {a:.3f} | {b:.3f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
