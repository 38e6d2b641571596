"""What an export's quantization costs the picture: the same model exported several ways, on held-out photos.

    python bench/export_quality.py EVAL_DIR fp32=DIR-fp32 published=DIR-q8 default=DIR-onnx --vae tiny \
        --json bench/results/export-quality-comic-DATE.json

Each LABEL=DIR is an exported folder (`sanaedit export MODEL --quant ...`) of one model; the first is the reference
(normally `--quant none`). Every held-out image of EVAL_DIR/manifest.jsonl is edited by each (seed 0, the folder's
own settings, `--vae`), through `load_pipeline` as the CLI runs it. Scores: `sanaedit.train.evaluate.compare`
against the comic filter's output (PSNR / SSIM / edge F1), and PSNR against the reference export's edit of the same
image (mean and worst). Each row also lists how its graphs compute (the manifest's quant scheme per graph).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sanaedit.core.noise import Generator  # noqa: E402
from sanaedit.load import load_pipeline  # noqa: E402
from sanaedit.train.evaluate import compare, load_pairs, psnr  # noqa: E402

METRICS = ("psnr", "ssim", "edge_f1")


def schemes(folder: Path) -> dict[str, str]:
    """graph -> how it computes, from the export's manifest."""
    graphs = json.loads((folder / "model_index.json").read_text())["graphs"]
    return {name: entry.get("quant", {}).get("scheme", "fp32") for name, entry in graphs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl (runs/comic/data/eval)")
    ap.add_argument("exports", nargs="+", help="LABEL=DIR: exports of one model; the first is the reference")
    ap.add_argument("--vae", choices=["full", "tiny"], default=None, help="the autoencoder (default: each folder's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    folders = dict(spec.rsplit("=", 1) if "=" in spec else (Path(spec).name, spec) for spec in args.exports)
    pairs = load_pairs(args.eval_dir)
    results, reference = {}, None
    for label, folder in folders.items():
        pipe = load_pipeline(folder, vae=args.vae)
        outs = [pipe(src, generator=Generator(0), progress=False).images[0] for _, src, _ in pairs]
        reference = reference or [np.asarray(o) for o in outs]
        scores = [compare(o, tgt) for o, (_, _, tgt) in zip(outs, pairs)]
        close = [psnr(np.asarray(o), r) for o, r in zip(outs, reference)]
        row = {k: float(np.mean([s[k] for s in scores])) for k in METRICS}
        finite = all(np.isfinite(close))  # not finite: the reference itself
        row["psnr_vs_reference"] = float(np.mean(close)) if finite else None
        row["worst_psnr_vs_reference"] = float(np.min(close)) if finite else None
        results[label] = {**row, "folder": str(folder), "graphs": schemes(Path(folder))}
        print(json.dumps({label: row}), flush=True)
    print(
        f"\n| export | PSNR dB | SSIM | edge F1 | PSNR vs {next(iter(folders))} (mean / worst) |\n|---|---|---|---|---|"
    )
    for label, r in results.items():
        close = (
            "(itself)"
            if r["psnr_vs_reference"] is None
            else (f"{r['psnr_vs_reference']:.2f} / {r['worst_psnr_vs_reference']:.2f}")
        )
        print(f"| {label} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['edge_f1']:.3f} | {close} |")
    if args.json:
        meta = {"eval_dir": args.eval_dir, "images": len(pairs), "vae": args.vae, "seed": 0}
        Path(args.json).write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
