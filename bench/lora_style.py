"""A style LoRA on the bundled model, on held-out photos: how close to its style's filter, at each LoRA scale.

    python bench/lora_style.py runs/ghibli-lora/data/eval --lora sanaedit/assets/ghibli-lora \
        --json bench/results/ghibli-lora-DATE.json

Rows: the input photo itself; the base model (LoRA scale 0: exactly the base); the base model with the LoRA at
each --scales value; the style's filter seen at the model's resolution and brought back (a perfect model of the
training target). Scores (`sanaedit.train.evaluate.compare`, seed 0) at the model's resolution on the held-out
images of EVAL_DIR/manifest.jsonl against their stored targets (the style filter's output), and at each whole
held-out photo's own size (EVAL_DIR/full/) against the filter applied at that size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from family import BUNDLED, load_dit_edits, mean  # noqa: E402

from sanaedit.image.upsample import upsample  # noqa: E402
from sanaedit.train.evaluate import compare, load_full_photos, load_pairs, model_view  # noqa: E402
from sanaedit.train.filters.ghibli import ghibli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder of the style's data (manifest.jsonl, full/)")
    ap.add_argument("--lora", required=True, help="LoRA file or folder (pytorch_lora_weights.safetensors)")
    ap.add_argument("--model", default=str(BUNDLED), help="base model folder (default: the bundled model)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0], help="LoRA scales (default: 0.5 1)")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    pipe = load_dit_edits(args.model)  # a style comes back guided (plan.styled): the base too
    pairs, photos = load_pairs(args.eval_dir), load_full_photos(args.eval_dir)
    res = pipe.config.resolution

    def edit(image):
        return pipe(image, generator=torch.Generator().manual_seed(0), progress=False).images[0]

    editors = {"the input photo itself": lambda im: im, "the base model (LoRA scale 0)": edit}
    for scale in args.scales:
        editors[f"base + LoRA at scale {scale:g}"] = (scale, edit)
    editors[f"the filter seen at {res} px, guided upsampling (a perfect model)"] = lambda im: upsample(
        model_view(ghibli(im), res), im, "guided"
    )
    targets_full = [np.asarray(ghibli(p)) for _, p in photos]
    results: dict[str, dict] = {}
    for name, editor in editors.items():
        if isinstance(editor, tuple):
            scale, editor = editor
            pipe.load_lora(args.lora, scale)
        low = [compare(editor(src), tgt) for _, src, tgt in pairs] if "perfect" not in name else None
        full = [compare(editor(p), t, np.asarray(p)) for (_, p), t in zip(photos, targets_full)]
        results[name] = {"model_resolution": mean(low) if low else None, "full_resolution": mean(full)}
        if "LoRA at" in name:
            pipe.unload_lora()
        print(json.dumps({name: results[name]}), flush=True)
    print(f"\n| output | PSNR dB ({res} px) | SSIM | edge F1 | PSNR dB (full size) | SSIM | edge F1 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        low, full = r["model_resolution"], r["full_resolution"]
        left = f"{low['psnr']:.2f} | {low['ssim']:.3f} | {low['edge_f1']:.3f}" if low else "- | - | -"
        print(f"| {name} | {left} | {full['psnr']:.2f} | {full['ssim']:.3f} | {full['edge_f1']:.3f} |")
    if args.json:
        setup = {"model": args.model, "lora": args.lora, "held_out_images": len(pairs), "photos": len(photos)}
        Path(args.json).write_text(json.dumps({"results": results, "setup": setup}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
