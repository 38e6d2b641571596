"""Held-out scores of an editor against the comic filter: PSNR, SSIM and an edge agreement score (F1 of ink
edges within 1 px), plus a before/after grid.

    python -m sanaedit.train.evaluate runs/comic/data/eval --model sanaedit/assets/comic-model \
        --untrained sanaedit/configs/comic.yaml --grid docs/comic-grid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..comic import comic


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(target, pred, data_range=255))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(target, pred, channel_axis=2, data_range=255))


def edges(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    return cv2.Canny(grey, 50, 150) > 0


def edge_f1(pred: np.ndarray, target: np.ndarray, tolerance: int = 1) -> float:
    """F1 of edge pixels: a predicted edge counts if a target edge lies within `tolerance` px, and vice versa."""
    e_pred, e_target = edges(pred), edges(target)
    if not e_pred.any() and not e_target.any():
        return 1.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_target = cv2.dilate(e_target.astype(np.uint8), kernel) > 0
    near_pred = cv2.dilate(e_pred.astype(np.uint8), kernel) > 0
    precision = (e_pred & near_target).sum() / max(1, e_pred.sum())
    recall = (e_target & near_pred).sum() / max(1, e_target.sum())
    return float(2 * precision * recall / max(1e-12, precision + recall))


def score(pred: Image.Image, photo: Image.Image) -> dict[str, float]:
    target = np.asarray(comic(photo))
    out = np.asarray(pred.convert("RGB").resize(photo.size))
    return {"psnr": psnr(out, target), "ssim": ssim(out, target), "edge_f1": edge_f1(out, target)}


def load_eval_photos(folder: str | Path) -> list[tuple[str, Image.Image]]:
    folder = Path(folder)
    records = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines() if x.strip()]
    return [(Path(r["source"]).stem, Image.open(folder / r["source"]).convert("RGB")) for r in records]


def untrained_pipeline(recipe: str | Path):
    """The recipe's model at step 0: what its first stage starts from (its random initialisation: same variant,
    same seed), with the recipe's export settings."""
    from .config import load_config
    from .model import build_model

    cfg = load_config(recipe)[0]
    pipe = build_model(cfg.model)
    for k, v in cfg.export.items():
        setattr(pipe.config, k, v)
    return pipe


@torch.no_grad()
def evaluate(models: dict[str, object], photos: list[tuple[str, Image.Image]], seed: int = 0) -> dict[str, dict]:
    """Mean scores per model name; the entry None stands for "the input photo itself"."""
    results: dict[str, dict] = {}
    outputs: dict[str, list[Image.Image]] = {}
    for name, pipe in models.items():
        rows, outs = [], []
        for _, photo in photos:
            if pipe is None:
                out = photo
            elif callable(getattr(pipe, "transformer", None)):  # a SanaEditPipeline
                out = pipe(photo, generator=torch.Generator().manual_seed(seed)).images[0]
            else:  # any photo -> image function
                out = pipe(photo)
            rows.append(score(out, photo))
            outs.append(out)
        results[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        outputs[name] = outs
    results["_outputs"] = outputs  # type: ignore[assignment]
    return results


def grid(photos: list[tuple[str, Image.Image]], outputs: dict[str, list[Image.Image]], cell: int = 192):
    """Rows: photos; columns: input, the filter's target, then each model's output."""
    cols = [("input", [p for _, p in photos]), ("comic filter", [comic(p) for _, p in photos])]
    cols += [(n, o) for n, o in outputs.items() if n != "input photo" and "ceiling" not in n]
    canvas = Image.new("RGB", (cell * len(cols), cell * len(photos)), (255, 255, 255))
    for c, (_, images) in enumerate(cols):
        for r, im in enumerate(images):
            im = im.copy()
            im.thumbnail((cell, cell))
            canvas.paste(im, (c * cell + (cell - im.width) // 2, r * cell + (cell - im.height) // 2))
    return canvas, [n for n, _ in cols]


def autoencoder_ceiling(pipe):
    """The filter's output through the model's DC-AE (encode + decode): the best any DiT on it could score."""
    from ..image_io import postprocess, preprocess

    def recon(photo: Image.Image) -> Image.Image:
        pixels, restore = preprocess(comic(photo), pipe.config.resolution)
        return postprocess(pipe.decode_latents(pipe.encode_image(pixels)), restore)

    return recon


def main(argv: list[str] | None = None) -> int:
    from ..pipeline import SanaEditPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl (runs/comic/data/eval)")
    ap.add_argument("--model", required=True, help="trained model folder")
    ap.add_argument("--untrained", default=None, help="recipe YAML whose random initialisation is scored too")
    ap.add_argument("--grid", default=None, help="write a before/after PNG grid of the whole held-out photos")
    args = ap.parse_args(argv)
    photos = load_eval_photos(args.eval_dir)
    models: dict[str, object] = {"input photo": None}
    if args.untrained:
        models["untrained model"] = untrained_pipeline(args.untrained)
    models["trained model"] = trained = SanaEditPipeline.from_pretrained(args.model)
    models["its DC-AE on the filter's output (ceiling)"] = autoencoder_ceiling(trained)
    results = evaluate(models, photos)
    outputs = results.pop("_outputs")
    print(f"{len(photos)} held-out images (scored against the comic filter's output)\n")
    print("| output | PSNR dB | SSIM | edge F1 |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['edge_f1']:.3f} |")
    if args.grid:
        whole = [i for i, (n, _) in enumerate(photos) if "-" not in n]  # the whole photos, not their crops
        canvas, names = grid([photos[i] for i in whole], {k: [v[i] for i in whole] for k, v in outputs.items()})
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(args.grid)
        print(f"\ngrid ({' | '.join(names)}): {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
