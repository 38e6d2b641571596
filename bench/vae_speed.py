"""DC-AE paths on the CPU: which way of encoding/decoding a 512x512 image is cheapest, and what it costs in error.

    nice python bench/vae_speed.py                    # DC-AE F32C32 (random weights), 512 px
    python bench/vae_speed.py --variant tiny --size 64

Paths (each vs plain fp32 PyTorch on the same input, PSNR of the decoded pixels / relative error of the latents):
fp32, channels_last fp32, bf16 (only fast on CPUs with native bf16),
diffusers tiling (tile 256, the smallest that fits DC-AE's 32x compression with overlap), and the exported graphs
on ONNX Runtime: fp32 (`ort_fp32`) and int8 convolutions with activations calibrated on photos (`ort_w8a8`,
`sanaedit export --quant ...,vae_encoder=w8a8,vae_decoder=w8a8`). The graphs are exported once per run into a
temporary folder by the export's own code (export time reported apart, not in the encode/decode times).

The input is the bundled sample photo (`--input photo`, the default; preprocessed as an edit does), which the w8a8
calibration never sees; `--input noise` gives uniform noise, outside the ranges a static calibration fits.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def finite_or_none(value):
    """JSON has no inf: the reference row's PSNR (against itself) is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def psnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    a, b = (t.float().clamp(-1, 1) * 127.5 + 127.5 for t in (ref, x))
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def rel(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float((ref.float() - x.float()).norm() / ref.float().norm())


PATHS = ["fp32", "channels_last", "bf16", "tiled", "ort_fp32", "ort_w8a8"]


class OnnxVae:
    """The DC-AE's encoder and decoder graphs, exported on first use into one temporary folder per run."""

    def __init__(self, vae, size: int):
        self.vae, self.size = vae, size
        self.scratch = tempfile.TemporaryDirectory(prefix="vae_speed-")  # removed at exit, on errors too
        self.folder = Path(self.scratch.name)
        self.specs: list | None = None

    def graphs(self, kind: str):
        """(encoder, decoder, seconds spent exporting/calibrating them now) for kind "fp32" or "w8a8"."""
        from sanaedit.backends.ort_graph import OrtGraph
        from sanaedit.export.calibrate import quantize_onnx_static, vae_calibration
        from sanaedit.export.graphs import vae_specs
        from sanaedit.export.onnx_export import export_onnx
        from sanaedit.models.vae import VaeDecoder, VaeEncoder, spatial_compression

        start = time.perf_counter()
        if self.specs is None:
            encoder, decoder = VaeEncoder(self.vae), VaeDecoder(self.vae)
            latent = self.size // spatial_compression(self.vae)
            self.specs = vae_specs(encoder, decoder, self.size, self.vae.config.latent_channels, latent)
            for spec in self.specs:
                export_onnx(spec, self.folder / f"{spec.name}.onnx")
        folder = self.folder
        if kind == "w8a8":
            folder = self.folder / "w8a8"
            folder.mkdir(exist_ok=True)
            calibration = vae_calibration(self.specs[0].module, self.size)  # held out: the bench's input photo
            for spec in self.specs:
                for file in self.folder.glob(f"{spec.name}.onnx*"):
                    shutil.copy(file, folder / file.name)
                quantize_onnx_static(folder / f"{spec.name}.onnx", spec.inputs[0], calibration[spec.name].samples)
        prepare_s = time.perf_counter() - start
        return (*(OrtGraph(folder / f"{spec.name}.onnx") for spec in self.specs), prepare_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sana-0.6b")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    p.add_argument("--input", choices=["photo", "noise"], default="photo")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from sanaedit.core.cpu import set_threads
    from sanaedit.image.io import load_image, preprocess
    from sanaedit.load import SAMPLE_PHOTO
    from sanaedit.models.variants import build_vae, load_variant

    set_threads()
    torch.manual_seed(0)
    vae = build_vae(load_variant(args.variant)).eval()
    if args.input == "photo":
        pixels = torch.from_numpy(preprocess(load_image(SAMPLE_PHOTO), args.size)[0])
    else:
        pixels = torch.rand(1, 3, args.size, args.size) * 2 - 1
    factor = vae.config.scaling_factor

    def run(model, x_pixels):
        enc_s, latents = timed(lambda: model.encode(x_pixels).latent * factor, args.repeats)
        dec_s, out = timed(lambda: model.decode(latents.to(x_pixels.dtype) / factor).sample, args.repeats)
        return enc_s, dec_s, latents, out

    def run_graphs(kind):
        encoder, decoder, prepare_s = onnx_vae.graphs(kind)
        print(f"  (exported{' and calibrated' if kind == 'w8a8' else ''} in {prepare_s:.0f} s)", flush=True)
        enc_s, latents = timed(lambda: encoder(pixels), args.repeats)
        dec_s, out = timed(lambda: decoder(latents), args.repeats)
        return enc_s, dec_s, latents, out, prepare_s

    onnx_vae = OnnxVae(vae, args.size)
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
        elif path == "tiled":
            model = copy.deepcopy(vae)
            tile = max(args.size // 2, 64)
            model.enable_tiling(tile, tile, tile * 3 // 4, tile * 3 // 4)
        print(f"{path} ...", flush=True)
        extra = {}
        if path in ("ort_fp32", "ort_w8a8"):
            enc_s, dec_s, latents, out, extra["prepare_s"] = run_graphs(path.removeprefix("ort_"))
        else:
            enc_s, dec_s, latents, out = run(model, x)
        if ref is None:
            ref = (latents, out)
        results[path] = {
            "encode_s": enc_s,
            "decode_s": dec_s,
            "latent_rel_err": rel(ref[0], latents),
            "decode_psnr_db": psnr(ref[1], out),
            **extra,
        }
        r = results[path]
        print(
            f"| {path} | {enc_s:.2f} | {dec_s:.2f} | {r['latent_rel_err']:.2e} | {r['decode_psnr_db']:.1f} |",
            flush=True,
        )
        del model
    if args.json:
        with open(args.json, "w") as f:
            header = {"variant": args.variant, "size": args.size, "input": args.input}
            strict = {k: {m: finite_or_none(v) for m, v in r.items()} for k, r in results.items()}
            json.dump({**header, "threads": torch.get_num_threads(), **strict}, f, allow_nan=False)


if __name__ == "__main__":
    main()
