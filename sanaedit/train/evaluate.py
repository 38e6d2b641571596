"""Held-out scores of an editor against the comic filter, at the model's resolution and at each photo's own.

    python -m sanaedit.train.evaluate runs/comic/data/eval --model sanaedit/assets/comic-model \
        --untrained sanaedit/configs/comic.yaml --grid docs/comic-grid.png

Model resolution: the held-out images of `EVAL_DIR/manifest.jsonl` (whole photos and crops, as the model sees them)
against their training-style targets. Full resolution: the whole held-out photos in `EVAL_DIR/full/` edited at
their own size (the pipeline's output: preprocessing, model, upsampling), against the filter applied to the
full-resolution photo, with reference rows: the untouched photo, the filter at the model's resolution plainly
upsampled (a perfect model of that target), and the filter's full-resolution output seen at the model's resolution
(a perfect model of the training target), upsampled plainly and guided.

Scores: PSNR, SSIM, edge F1 (ink edges within 1 px), outline strength (mean image gradient / the filter's) and the
edge band (the darkest 4 px border strip's luminance against the input's, relative to the whole image's ratio:
1 = no band; the black-padding bug scored ~0.5), and ink specks per megapixel: dark blobs too short to be lines,
anywhere and on the photo's smooth areas (`specks`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sanaedit.core.choices import Upsample
from sanaedit.image.upsample import upsample
from sanaedit.train.filters.comic import comic

Editor = Callable[[Image.Image], Image.Image]


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


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def outline_strength(rgb: np.ndarray) -> float:
    """Mean gradient magnitude of the luminance (central differences): how much line and edge an image has."""
    gy, gx = np.gradient(_luma(rgb))
    return float(np.hypot(gx, gy).mean())


def edge_band(pred: np.ndarray, photo: np.ndarray, width: int = 4) -> float:
    """The darkest border strip: min over the 4 sides of (output luminance / input luminance in the outer `width`
    px), divided by that ratio over the whole image. 1 = the border is as bright as the rest; 0.5 = a dark band."""
    lp, li = _luma(pred) + 1.0, _luma(photo) + 1.0
    whole = lp.mean() / li.mean()
    strips = [np.s_[:width], np.s_[-width:], np.s_[:, :width], np.s_[:, -width:]]
    return float(min(lp[s].mean() / li[s].mean() for s in strips) / whole)


SPECK_DARK = 70  # luminance under which an output pixel reads as ink (the filter's ink is 20)


def specks(pred: np.ndarray, photo: np.ndarray) -> tuple[float, float]:
    """(specks per megapixel, those on smooth areas): dark blobs of the output too short to be a line (under 1/25 of
    the short side, the filter's own rule), anywhere, and those centred farther than 1/50 of the short side from any
    edge of the photo (Canny), where a comic draws no ink at all."""
    from skimage.measure import label, regionprops_table

    side, megapixels = min(photo.shape[:2]), photo.shape[0] * photo.shape[1] / 1e6
    blobs = regionprops_table(
        label(_luma(pred) < SPECK_DARK, connectivity=2), properties=("axis_major_length", "centroid")
    )
    short = blobs["axis_major_length"] < side / 25
    far = max(1, round(side / 50))
    near_edge = cv2.dilate(edges(photo).astype(np.uint8), np.ones((2 * far + 1, 2 * far + 1), np.uint8)) > 0
    rows, cols = blobs["centroid-0"].round().astype(int), blobs["centroid-1"].round().astype(int)
    smooth = short & ~near_edge[rows, cols]
    return float(short.sum() / megapixels), float(smooth.sum() / megapixels)


def score(pred: Image.Image, photo: Image.Image) -> dict[str, float]:
    """Scores of an edit of `photo` against the filter applied to the photo at its own size."""
    out = pred.convert("RGB")
    if out.size != photo.size:
        out = out.resize(photo.size, Image.Resampling.BILINEAR)
    return compare(out, np.asarray(comic(photo)), np.asarray(photo.convert("RGB")))


def compare(pred: Image.Image, target: np.ndarray, photo: np.ndarray | None = None) -> dict[str, float]:
    """Scores of `pred` against `target` (uint8 RGB of the same size); with `photo` (the input), outline strength
    and the edge band too."""
    out = np.asarray(pred.convert("RGB"))
    if out.shape != target.shape:
        raise ValueError(f"output {out.shape} and target {target.shape} differ in size")
    result = {"psnr": psnr(out, target), "ssim": ssim(out, target), "edge_f1": edge_f1(out, target)}
    if photo is not None:
        result["outline"] = outline_strength(out) / max(1e-9, outline_strength(target))
        result["band"] = edge_band(out, photo)
        result["specks"], result["smooth_specks"] = specks(out, photo)
    return result


def load_pairs(folder: str | Path) -> list[tuple[str, Image.Image, np.ndarray]]:
    """(name, source, target array) of a manifest folder's editing pairs, at the model's resolution, through the
    inference loader."""
    from sanaedit.image.io import load_image

    folder = Path(folder)
    records = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines() if x.strip()]
    return [
        (Path(r["source"]).stem, load_image(folder / r["source"]), np.asarray(load_image(folder / r["target"])))
        for r in records
    ]


def load_full_photos(folder: str | Path) -> list[tuple[str, Image.Image]]:
    """The whole held-out photos at their own resolution (`EVAL_DIR/full/*.png`), through the inference loader."""
    from sanaedit.image.io import load_image

    return [(p.stem, load_image(p)) for p in sorted((Path(folder) / "full").glob("*.png"))]


def untrained_pipeline(recipe: str | Path):
    """The recipe's model at step 0: what its first stage starts from (its random initialisation: same variant,
    same seed), with the recipe's export settings."""
    from sanaedit.train.config import load_config
    from sanaedit.train.model import build_model

    cfg = load_config(recipe)[0]
    pipe = build_model(cfg.model)
    for k, v in cfg.export.items():
        setattr(pipe.config, k, v)
    return pipe


def pipeline_editor(pipe, method: str | None = None, seed: int = 0) -> Editor:
    """photo -> the pipeline's edit (seeded), with upsampling `method` (default: the model's own)."""

    def edit(photo: Image.Image) -> Image.Image:
        saved = pipe.config.upsample
        pipe.config.upsample = method or saved
        try:
            return pipe(photo, generator=torch.Generator().manual_seed(seed)).images[0]
        finally:
            pipe.config.upsample = saved

    return edit


def model_view(photo: Image.Image, resolution: int) -> Image.Image:
    """The photo at the size the model sees it (long side = resolution), resized as preprocessing does."""
    s = resolution / max(photo.size)
    return photo.resize((max(1, round(photo.width * s)), max(1, round(photo.height * s))), Image.Resampling.BILINEAR)


def filter_at_model_resolution(resolution: int) -> Editor:
    """A perfect model of the filter at the model's resolution, plainly upsampled to the photo's size."""
    return lambda photo: comic(model_view(photo, resolution)).resize(photo.size, Image.Resampling.BILINEAR)


def filter_seen_at_model_resolution(resolution: int, method: str) -> Editor:
    """A perfect model of the training target (the filter at full resolution, brought to the model's size),
    upsampled back with `method`."""
    return lambda photo: upsample(model_view(comic(photo), resolution), photo, method)


def autoencoder_ceiling(pipe) -> Callable[[Image.Image], Image.Image]:
    """A picture through the model's DC-AE (encode + decode) at the model's resolution: applied to the target,
    the best any DiT on this autoencoder could score."""
    from sanaedit.image.io import postprocess, preprocess

    def recon(image: Image.Image) -> Image.Image:
        pixels, restore = preprocess(image, pipe.config.resolution, pipe.config.padding)
        return postprocess(pipe.decode_latents(pipe.encode_image(pixels)), restore)

    return recon


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@torch.no_grad()
def evaluate_model_resolution(
    editors: dict[str, Editor | None], pairs: list[tuple[str, Image.Image, np.ndarray]], ceiling: Editor | None = None
) -> dict[str, dict[str, float]]:
    """Mean scores at the model's resolution; an editor None stands for "the input itself"; `ceiling` is applied to
    the target (the autoencoder's reconstruction of it)."""
    results = {}
    for name, edit in editors.items():
        results[name] = _mean(
            [compare(source if edit is None else edit(source), target) for _, source, target in pairs]
        )
    if ceiling is not None:
        results["its DC-AE on the target (ceiling)"] = _mean(
            [compare(ceiling(Image.fromarray(target)), target) for _, _, target in pairs]
        )
    return results


@torch.no_grad()
def evaluate_full_resolution(
    editors: dict[str, Editor | None], photos: list[tuple[str, Image.Image]]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, list[Image.Image]]]:
    """(mean scores, PSNR per photo, outputs) per editor, each photo scored at its own size against the filter
    applied to it at that size; an editor None stands for "the untouched photo"."""
    targets = [np.asarray(comic(photo)) for _, photo in photos]
    results, per_photo, outputs = {}, {}, {}
    for name, edit in editors.items():
        outs = [photo if edit is None else edit(photo) for _, photo in photos]
        rows = [compare(o, t, np.asarray(p)) for o, t, (_, p) in zip(outs, targets, photos)]
        results[name] = _mean(rows)
        per_photo[name] = {n: r["psnr"] for (n, _), r in zip(photos, rows)}
        outputs[name] = outs
    return results, per_photo, outputs


def grid(photos: list[tuple[str, Image.Image]], columns: dict[str, list[Image.Image]], cell: int = 256):
    """Rows: photos; columns: the given images (e.g. input, the filter, the models), each fitted into a cell."""
    canvas = Image.new("RGB", (cell * len(columns), cell * len(photos)), (255, 255, 255))
    for c, images in enumerate(columns.values()):
        for r, im in enumerate(images):
            im = im.copy()
            im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
            canvas.paste(im, (c * cell + (cell - im.width) // 2, r * cell + (cell - im.height) // 2))
    return canvas


def _table(results: dict[str, dict[str, float]], extra: bool) -> str:
    head = "| output | PSNR dB | SSIM | edge F1 |" + (
        " outline | edge band | specks/MP | on smooth areas |" if extra else ""
    )
    lines = [head, "|---" * (8 if extra else 4) + "|"]
    for name, r in results.items():
        row = f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['edge_f1']:.3f} |"
        if extra:
            row += f" {r['outline']:.2f} | {r['band']:.2f} | {r['specks']:.0f} | {r['smooth_specks']:.0f} |"
        lines.append(row)
    return "\n".join(lines)


def _out(text: str = "") -> None:
    """The report, on stdout: what `python -m sanaedit.train.evaluate` is run for (progress goes to the log)."""
    sys.stdout.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    from sanaedit.core.log import configure
    from sanaedit.image.upsample import METHODS
    from sanaedit.pipeline import SanaEditPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl and full/ (runs/comic/data/eval)")
    ap.add_argument("--model", required=True, help="trained model folder")
    ap.add_argument("--untrained", default=None, help="recipe YAML whose random initialisation is scored too")
    ap.add_argument("--grid", default=None, help="write a PNG grid of the whole held-out photos at full resolution")
    ap.add_argument("--json", default=None, help="write all the scores as JSON")
    args = ap.parse_args(argv)
    configure()  # sanaedit's messages on stderr, the libraries' loading bars off
    trained = SanaEditPipeline.from_pretrained(args.model)
    res = trained.config.resolution
    untrained = untrained_pipeline(args.untrained) if args.untrained else None

    pairs = load_pairs(args.eval_dir)
    low: dict[str, Editor | None] = {"the input itself": None}
    if untrained is not None:
        low["the untrained model"] = pipeline_editor(untrained)
    refiner = trained.flow.refiner is not None
    low["the trained model"] = pipeline_editor(trained, Upsample.GUIDED if refiner else None)  # the DiT alone
    if refiner:
        low["the trained model with its refiner"] = pipeline_editor(trained, Upsample.REFINE)
    model_res = evaluate_model_resolution(low, pairs, autoencoder_ceiling(trained))
    _out(f"At the model's resolution ({res} px): {len(pairs)} held-out images, against the training target\n")
    _out(_table(model_res, extra=False))

    photos = load_full_photos(args.eval_dir)
    full: dict[str, Editor | None] = {
        "the untouched photo": None,
        f"the filter at {res} px, plainly upsampled": filter_at_model_resolution(res),
    }
    for method in (Upsample.PLAIN, Upsample.GUIDED):
        full[f"the full-resolution filter seen at {res} px, {method} upsampling"] = filter_seen_at_model_resolution(
            res, method
        )
    if untrained is not None:
        full["the untrained model"] = pipeline_editor(untrained)
    for method in METHODS:
        if method != Upsample.REFINE or refiner:  # refine: the folder's learned refiner
            full[f"the trained model, {method} upsampling"] = pipeline_editor(trained, method)
    full_res, per_photo, outputs = evaluate_full_resolution(full, photos)
    sizes = ", ".join(f"{n} {p.width}x{p.height}" for n, p in photos)
    _out(f"\nAt each photo's own resolution ({sizes}), against the filter applied at that resolution\n")
    _out(_table(full_res, extra=True))
    names = [n for n, _ in photos]
    _out("\nPSNR per photo\n\n| output | " + " | ".join(names) + " |\n|---" * 1 + "|---" * len(names) + "|")
    for name, row in per_photo.items():
        _out(f"| {name} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model_resolution": model_res, "full_resolution": full_res, "per_photo": per_photo}, indent=1)
        )
    if args.grid:
        columns = {"input": [p for _, p in photos], "comic filter": [comic(p) for _, p in photos]}
        if untrained is not None:
            columns["untrained"] = outputs["the untrained model"]
        columns["bundled model"] = outputs[f"the trained model, {trained.config.upsample} upsampling"]
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        grid(photos, columns).save(args.grid)
        _out(f"\ngrid ({' | '.join(columns)}): {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
