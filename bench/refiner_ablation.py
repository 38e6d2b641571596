"""Does the learned refiner need the DiT's edit? The same small network trained with and without it.

The bundled model's refiner (sanaedit/models/refiner.py) sees the full-resolution photo and the DiT's guided edit.
The comic filter it is scored against is a deterministic, local function of the photo, so a network that sees the
photo could learn the filter without the edit. This experiment trains the refiner's layout (width 24, dilations
1-2-4-8-1, zero-initialised residual output) three ways on the same crops, budget and seed, and scores each on the
held-out photos at their own size against the filter applied there:

    both   photo + edit -> edit + correction     (what ships)
    photo  photo alone  -> photo + correction    (no DiT at all)

Step 1 (`prep`) edits the bundled model's training photos (never the held-out ones) at 1, 0.75 and 0.5 of their
size and 12 synthetic scenes with the bundled model's DiT (guided upsampling) and stores (photo, edit, target);
step 2 (`train MODE`) trains on random 128 px crops (batch 8, AdamW 2e-3, one-cycle, 2000 steps) and logs the
held-out PSNR every 250 steps. The network is written out here (not imported) so that its input can change.

    python bench/refiner_ablation.py prep /tmp/refiner-ablation
    python bench/refiner_ablation.py train /tmp/refiner-ablation both
    python bench/refiner_ablation.py train /tmp/refiner-ablation photo
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def prep(out: Path) -> None:
    from PIL import Image

    from sanaedit.image.io import load_image
    from sanaedit.image.photos import package_photos, synthetic_scene
    from sanaedit.load import load_pipeline
    from sanaedit.train.comic_data import HELD_OUT
    from sanaedit.train.filters.comic import comic

    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(None)
    pipe.config.upsample = "guided"  # the DiT's own edit
    items = []
    for name, path in package_photos().items():
        img = load_image(path)
        if name in HELD_OUT:
            items.append(("heldout-" + name, img))
            continue
        for s in (1.0, 0.75, 0.5):
            w, h = round(img.width * s), round(img.height * s)
            if max(w, h) >= 300:
                items.append((f"{name}-{s}", img.resize((w, h), Image.Resampling.LANCZOS)))
    rng = np.random.default_rng(0)
    items += [(f"synth{i}", synthetic_scene(rng, 512)) for i in range(12)]
    for name, img in items:
        edit = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
        arrays = {"photo": np.asarray(img), "edit": np.asarray(edit), "target": np.asarray(comic(img))}
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(name, img.size, flush=True)


class Net(nn.Module):
    def __init__(self, mode: str, width: int = 24):
        super().__init__()
        self.mode = mode
        self.inp = nn.Conv2d(6 if mode == "both" else 3, width, 3, padding=1)
        self.body = nn.ModuleList([nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in (1, 2, 4, 8, 1)])
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, photo: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        x = torch.cat([photo, edit], 1) if self.mode == "both" else photo
        h = F.silu(self.inp(x * 2 - 1))
        for conv in self.body:
            h = h + F.silu(conv(h))
        return (edit if self.mode == "both" else photo) + self.out(h)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2 / 255**2)))


def train(data: Path, mode: str, steps: int = 2000, crop: int = 128, batch: int = 8) -> None:
    torch.manual_seed(0)
    files = sorted(glob.glob(str(data / "*.npz")))
    pictures = [dict(np.load(f)) for f in files if "heldout" not in f]
    held = [dict(np.load(f)) for f in files if "heldout" in f]
    net = Net(mode)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(0)

    def draw():
        out = []
        for _ in range(batch):
            d = pictures[rng.integers(len(pictures))]
            h, w = d["photo"].shape[:2]
            c = min(crop, h, w)
            y, x = rng.integers(h - c + 1), rng.integers(w - c + 1)
            views = [_t(d[k][y : y + c, x : x + c]) for k in ("photo", "edit", "target")]
            if c < crop:
                views = [F.interpolate(v[None], crop, mode="bilinear")[0] for v in views]
            if rng.random() < 0.5:
                views = [v.flip(2) for v in views]
            out.append(views)
        return [torch.stack(v) for v in zip(*out)]

    @torch.no_grad()
    def held_out() -> list[float]:
        scores = []
        for d in held:
            o = net(_t(d["photo"])[None], _t(d["edit"])[None])[0].clamp(0, 1)
            scores.append(_psnr((o.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), d["target"]))
        return scores

    started = time.time()
    for step in range(steps):
        photo, edit, target = draw()
        loss = F.mse_loss(net(photo, edit), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            scores = held_out()
            print(step, f"loss {loss.item():.5f}", "held-out PSNR", np.round(scores, 2), f"mean {np.mean(scores):.2f}",
                  f"{time.time() - started:.0f}s", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prep", "train"])
    ap.add_argument("data", type=Path)
    ap.add_argument("mode", nargs="?", choices=["both", "photo"], default="both")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prep(args.data) if args.step == "prep" else train(args.data, args.mode)


if __name__ == "__main__":
    main()
