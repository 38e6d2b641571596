"""What a ControlNet does to a model's edits of the held-out photos, at each photo's own resolution.

    python -m sanaedit.train.evaluate_control --model sanaedit/assets/comic-model \
        [--controlnet runs/comic-controlnet/controlnet] [--upsample plain] [--json scores.json] [--picture PNG]

The held-out photos of the comic recipe (`comic_data.HELD_OUT`, never trained on) are edited whole, at their own
size (preprocessing, model, the model's upsampling or `--upsample`'s; seed 0), without a control image and with
their own edges (`--control-image edges`) at each `--scales`. Scores (`evaluate.py`'s): edge F1 against the photo
(Canny edges of both, within 1 px: how closely the edit keeps the photo's lines), and edge F1 and PSNR against the
comic filter applied at the photo's resolution (the recipe's target). `--picture` writes one photo, its edges, and
the edits without and with the ControlNet, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sanaedit.train.evaluate import edge_f1, psnr
from sanaedit.train.filters.comic import comic


def held_out_photos() -> list[tuple[str, Image.Image]]:
    """The comic recipe's held-out photos, whole, at their own resolution (through the inference loader)."""
    from sanaedit.image.io import load_image
    from sanaedit.image.photos import package_photos
    from sanaedit.train.comic_data import HELD_OUT

    photos = package_photos()
    return [(Path(name).stem, load_image(photos[name])) for name in HELD_OUT if name in photos]


def scores(edit: Image.Image, photo: Image.Image, target: np.ndarray) -> dict[str, float]:
    out = np.asarray(edit.convert("RGB").resize(photo.size, Image.Resampling.BILINEAR))
    return {
        "edge_f1_photo": edge_f1(out, np.asarray(photo.convert("RGB"))),
        "edge_f1_filter": edge_f1(out, target),
        "psnr_filter": psnr(out, target),
    }


@torch.no_grad()
def evaluate(pipe, photos: list[tuple[str, Image.Image]], scales: list[float], seed: int = 0):
    """({setting: mean scores}, {setting: {photo: scores}}, {setting: edits}) for no control and each scale."""
    settings = {"without the ControlNet": {}}
    settings.update({f"with its edges, scale {s:g}": {"control_image": "edges", "controlnet_conditioning_scale": s}
                     for s in scales})  # fmt: skip
    targets = [np.asarray(comic(photo)) for _, photo in photos]
    means, per_photo, edits = {}, {}, {}
    for name, kwargs in settings.items():
        outs = [pipe(photo, generator=torch.Generator().manual_seed(seed), **kwargs).images[0] for _, photo in photos]
        rows = {n: scores(out, photo, t) for out, (n, photo), t in zip(outs, photos, targets)}
        per_photo[name], edits[name] = rows, outs
        means[name] = {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values()))}
    return means, per_photo, edits


def side_by_side(images: list[Image.Image], height: int = 160, gap: int = 4) -> Image.Image:
    """The images in one row, each scaled to `height`, on white."""
    scaled = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.Resampling.LANCZOS)
              for im in images]  # fmt: skip
    row = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for im in scaled:
        row.paste(im, (x, 0))
        x += im.width + gap
    return row


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    from sanaedit.core.log import configure
    from sanaedit.pipeline import SanaEditPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sanaedit/assets/comic-model", help="a PyTorch model folder")
    ap.add_argument("--controlnet", default=None, help="a ControlNet folder (default: the model folder's own)")
    ap.add_argument("--scales", default="1", help="conditioning scales, comma-separated (default: 1)")
    ap.add_argument(
        "--upsample", default=None, help="back to the photo's size: plain, guided, refine (default: the model's)"
    )
    ap.add_argument("--json", default=None, help="write the scores as JSON")
    ap.add_argument("--picture", default=None, help="write photo | edges | without | with for the first photo (PNG)")
    args = ap.parse_args(argv)
    configure()
    pipe = SanaEditPipeline.from_pretrained(args.model, controlnet=args.controlnet, upsample=args.upsample)
    if pipe.controlnet is None:
        raise SystemExit(f"{args.model} has no controlnet/: give one with --controlnet DIR")
    photos = held_out_photos()
    scales = [float(s) for s in args.scales.split(",")]
    means, per_photo, edits = evaluate(pipe, photos, scales)
    sizes = ", ".join(f"{n} {p.width}x{p.height}" for n, p in photos)
    _out(f"The held-out photos at their own resolution ({sizes}), seed 0, {pipe.config.upsample} upsampling\n")
    _out("| edit | edge F1 vs the photo | edge F1 vs the filter | PSNR vs the filter (dB) |\n|---|---|---|---|")
    for name, m in means.items():
        _out(f"| {name} | {m['edge_f1_photo']:.3f} | {m['edge_f1_filter']:.3f} | {m['psnr_filter']:.2f} |")
    names = [n for n, _ in photos]
    _out("\nEdge F1 vs the photo, per photo\n\n| edit | " + " | ".join(names) + " |\n|---" + "|---" * len(names) + "|")
    for name, rows in per_photo.items():
        _out(f"| {name} | " + " | ".join(f"{rows[n]['edge_f1_photo']:.3f}" for n in names) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"mean": means, "per_photo": per_photo}, indent=1))
    if args.picture:
        first, photo = photos[0]
        from sanaedit.image.edges import edge_picture

        tiles = [photo, edge_picture(photo), edits["without the ControlNet"][0],
                 edits[f"with its edges, scale {scales[0]:g}"][0]]  # fmt: skip
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        side_by_side(tiles).save(args.picture, optimize=True)
        _out(f"\npicture ({first}: photo | its edges | without | with): {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
