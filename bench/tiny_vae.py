"""The light autoencoder against the DC-AE it was distilled from: reconstruction quality and time, held-out images.

    python bench/tiny_vae.py runs/comic/data/eval --model runs/comic-tiny-vae/model \
        --json bench/results/tiny-vae-comic-DATE.json

For each of the held-out photos and their comic targets (EVAL_DIR/manifest.jsonl, at the model's resolution): the
picture through each autoencoder (encode + decode, the pipeline's own preprocessing), scored against the picture
itself (PSNR / SSIM / edge F1: `sanaedit.train.evaluate.compare`); and the tiny decoder on the DC-AE's latents (what
it is trained to imitate: the DC-AE decoder's output). Seconds per encode and per decode of one image, minimum over
--repeats, --threads CPU threads. How the edit itself scores with each: bench/fast_path.py --tiny-vae.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sanaedit.image.io import postprocess, preprocess  # noqa: E402
from sanaedit.load import load_model_folder  # noqa: E402
from sanaedit.train.evaluate import compare, load_pairs  # noqa: E402

METRICS = ("psnr", "ssim", "edge_f1")


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl (runs/comic/data/eval)")
    ap.add_argument("--model", required=True, help="a model folder with both autoencoders (vae/ and tiny_vae/)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (default: 5)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    full, tiny = (load_model_folder(args.model, vae=kind) for kind in ("full", "tiny"))
    size, padding = full.config.resolution, full.config.padding
    pairs = load_pairs(args.eval_dir)
    pictures = {"photo": [src for _, src, _ in pairs], "comic target": [Image.fromarray(t) for _, _, t in pairs]}

    def through(encoder_pipe, decoder_pipe, image):
        pixels, restore = preprocess(image, size, padding)
        return postprocess(decoder_pipe.decode_latents(encoder_pipe.encode_image(pixels)), restore)

    ways = {"DC-AE": (full, full), "tiny": (tiny, tiny), "DC-AE encoder, tiny decoder": (full, tiny)}
    results: dict[str, dict] = {}
    for kind, images in pictures.items():
        for way, (enc, dec) in ways.items():
            scores = [compare(through(enc, dec, im), np.asarray(im)) for im in images]
            results[f"{kind}: {way}"] = {k: float(np.mean([s[k] for s in scores])) for k in METRICS}
            print(json.dumps({f"{kind}: {way}": results[f"{kind}: {way}"]}), flush=True)
    pixels = preprocess(pictures["photo"][0], size, padding)[0]
    latents = full.encode_image(pixels)
    speed = {
        name: {
            "encode_s": best_time(lambda p=pipe: p.encode_image(pixels), args.repeats),
            "decode_s": best_time(lambda p=pipe: p.decode_latents(latents), args.repeats),
        }
        for name, pipe in (("DC-AE", full), ("tiny", tiny))
    }
    out = {
        "reconstruction": results,
        "speed": speed,
        "setup": {
            "model": args.model,
            "images": len(pairs),
            "resolution": size,
            "threads": args.threads,
            "repeats": args.repeats,
            "torch": torch.__version__,
        },  # fmt: skip
    }
    print("| pictures: autoencoder | PSNR dB | SSIM | edge F1 |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['edge_f1']:.3f} |")
    print("| autoencoder | encode s | decode s |\n|---|---|---|")
    for name, s in speed.items():
        print(f"| {name} | {s['encode_s']:.4f} | {s['decode_s']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
