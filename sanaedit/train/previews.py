"""Periodic sample grids: edits (or text-to-image results) of held-out images, or autoencoder reconstructions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.config import SampleConfig
from sanaedit.train.data import ManifestDataset
from sanaedit.train.parts import TrainParts
from sanaedit.train.stages import Stage


class Previews:
    """`write(path, ...)`: one row of tiles -- (input, output) pairs, or text-to-image outputs -- as a PNG."""

    def __init__(self, manifest: str | Path | None, stage: Stage, resolution: int, settings: SampleConfig):
        self.manifest, self.stage, self.resolution, self.settings = manifest, stage, resolution, settings
        self._ds: ManifestDataset | None = None

    def source(self) -> ManifestDataset:
        if self._ds is None:
            self._ds = ManifestDataset(self.manifest, kind=self.stage.data, resolution=self.resolution, skip_bad=True)
        return self._ds

    def pixels(self, i: int) -> torch.Tensor:
        ds = self.source()
        item = ds[i % len(ds)]
        if item is None:
            return torch.zeros(3, self.resolution, self.resolution)
        return item.get("source", item["target"])

    def prompt(self, i: int) -> str:
        ds = self.source()
        return ds.records[i % len(ds)].get("prompt", "")

    @torch.no_grad()
    def write(
        self, path: Path, parts: TrainParts, pipeline: Callable[[], SanaEditPipeline], device: torch.device
    ) -> Path:
        """Render with `parts` in eval mode (back to train mode after); `pipeline()` exports it for sampling."""
        from PIL import Image

        from sanaedit.image.io import postprocess

        count, steps = self.settings.count, self.settings.steps
        path.parent.mkdir(parents=True, exist_ok=True)
        parts.eval()
        try:
            if self.stage.data == "images":
                pixels = torch.stack([self.pixels(i) for i in range(count)])
                recon = parts.reconstruct(pixels.to(device))
                tiles = [postprocess(x[None], None) for pair in zip(pixels, recon) for x in pair]
            else:
                pipe = pipeline()
                tiles = []
                for i in range(count):
                    gen = torch.Generator().manual_seed(i)
                    if self.stage.data in ("edit", "control"):
                        src = postprocess(self.pixels(i)[None], None)
                        control = {"control_image": "edges"} if self.stage.data == "control" else {}
                        tiles += [src, pipe(src, num_inference_steps=steps, generator=gen, **control).images[0]]
                    else:
                        tiles.append(pipe(None, prompt=self.prompt(i), num_inference_steps=steps).images[0])
            w = tiles[0].width
            grid = Image.new("RGB", (w * len(tiles), w))
            for i, tile in enumerate(tiles):
                grid.paste(tile.resize((w, w)), (i * w, 0))
            grid.save(path)
        finally:
            parts.train()
        return path
