"""DC-AE paths on the CPU: which way of encoding/decoding a 512x512 image is cheapest, and what it costs in error.

    nice python bench/vae_speed.py                    # DC-AE F32C32 (random weights), 512 px
    python bench/vae_speed.py --variant tiny --size 64

Paths (each vs plain fp32 PyTorch on the same input, PSNR of the decoded pixels / relative error of the latents):
fp32, channels_last fp32, bf16 (only fast on CPUs with native bf16), 8-bit weights (dequantized per call),
diffusers tiling (tile 256, the smallest that fits DC-AE's 32x compression with overlap).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def psnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    a, b = (t.float().clamp(-1, 1) * 127.5 + 127.5 for t in (ref, x))
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def rel(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float((ref.float() - x.float()).norm() / ref.float().norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sana-0.6b")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--paths", nargs="+", default=["fp32", "channels_last", "bf16", "int8w", "tiled"])
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from sanaedit.quant import quantize_model
    from sanaedit.speed import set_threads
    from sanaedit.variants import build_vae, load_variant

    set_threads()
    torch.manual_seed(0)
    vae = build_vae(load_variant(args.variant)).eval()
    pixels = torch.rand(1, 3, args.size, args.size) * 2 - 1
    factor = vae.config.scaling_factor

    def run(model, x_pixels):
        enc_s, latents = timed(lambda: model.encode(x_pixels).latent * factor, args.repeats)
        dec_s, out = timed(lambda: model.decode(latents.to(x_pixels.dtype) / factor).sample, args.repeats)
        return enc_s, dec_s, latents, out

    results = {}
    ref = None
    for path in args.paths:
        model, x = vae, pixels
        if path == "channels_last":
            model, x = (
                copy.deepcopy(vae).to(memory_format=torch.channels_last),
                pixels.to(memory_format=torch.channels_last),
            )
        elif path == "bf16":
            model, x = copy.deepcopy(vae).to(torch.bfloat16), pixels.to(torch.bfloat16)
        elif path == "int8w":
            model = copy.deepcopy(vae)
            quantize_model(model, 8)
        elif path == "tiled":
            model = copy.deepcopy(vae)
            tile = max(args.size // 2, 64)
            model.enable_tiling(tile, tile, tile * 3 // 4, tile * 3 // 4)
        print(f"{path} ...", flush=True)
        enc_s, dec_s, latents, out = run(model, x)
        if ref is None:
            ref = (latents, out)
        results[path] = {
            "encode_s": enc_s,
            "decode_s": dec_s,
            "latent_rel_err": rel(ref[0], latents),
            "decode_psnr_db": psnr(ref[1], out),
        }
        r = results[path]
        print(
            f"| {path} | {enc_s:.2f} | {dec_s:.2f} | {r['latent_rel_err']:.2e} | {r['decode_psnr_db']:.1f} |",
            flush=True,
        )
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"variant": args.variant, "size": args.size, "threads": torch.get_num_threads(), **results}, f)


if __name__ == "__main__":
    main()
