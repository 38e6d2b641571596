"""What the learned full-resolution refiner (`--upsample refine`) costs on top of guided upsampling, by photo size.

One process, one run: for each size, a random photo and edit, the bundled model's refiner (or `--model`'s), the
guided filter from a 256 px edit vs guided + refiner; median wall-clock of `--repeats` runs, and the peak RSS each
adds (ru_maxrss growth, measured in a fresh child per size so one size's peak does not hide the next's).

    python bench/refiner_speed.py --threads 2 --json bench/results/refiner-speed-2026-12-02.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time


def _measure(size: tuple[int, int], model: str | None, threads: int, repeats: int, queue) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from sanaedit.image.upsample import upsample
    from sanaedit.load import load_pipeline

    torch.set_num_threads(threads)
    refiner = load_pipeline(model).flow.refiner
    rng = np.random.default_rng(0)
    width, height = size
    photo = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    edit = photo.resize((256, max(1, round(256 * height / width))))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    guided_s, refine_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        guided = upsample(edit, photo, "guided")
        guided_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        refiner.refine(photo, guided)
        refine_s.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "size": f"{width}x{height}",
            "megapixels": round(width * height / 1e6, 2),
            "guided_s": round(statistics.median(guided_s), 3),
            "refiner_s": round(statistics.median(refine_s), 3),
            "refiner_s_per_mp": round(statistics.median(refine_s) / (width * height / 1e6), 3),
            "ratio_to_guided": round(statistics.median(refine_s) / statistics.median(guided_s), 1),
            "peak_rss_growth_mb": round((peak - base) / 1024),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder with refiner.safetensors (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", nargs="+", default=["640x427", "1600x1200", "2400x1600", "4000x3000"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.split("x"))
        queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(
            target=_measure, args=(size, args.model, args.threads, args.repeats, queue)
        )
        child.start()
        rows.append(queue.get())
        child.join()
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
