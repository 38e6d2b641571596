"""Where a stage's samples come from: a manifest, a Hugging Face dataset, or a bundled set built first
(`data.build: comic`); and their pre-encoded latents (`data.pre_encode`), keyed by a fingerprint of the data and
of the frozen weights that encoded them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sanaedit.train.config import StageConfig
from sanaedit.train.data import LatentDataset, ManifestDataset, SampleDataset, cache_matches, pre_encode
from sanaedit.train.parts import TrainParts
from sanaedit.train.stages import Stage


@dataclass(frozen=True)
class DataSources:
    """The manifests a stage reads: the config's, or those a data builder wrote."""

    manifest: str | None
    eval_manifest: str | None

    @property
    def preview_manifest(self) -> str | None:
        """What the periodic samples are made of: the eval manifest, else the training one."""
        return self.eval_manifest or self.manifest


def resolve_sources(cfg: StageConfig, resolution: int) -> DataSources:
    """Build `data.build`'s set when asked (reused when already built with the same settings); the config is
    not changed: the paths it derives are returned."""
    d = cfg.data
    if d.build == "comic":
        from sanaedit.train.comic_data import build_comic_dataset

        root = Path(d.root or Path(cfg.output_dir) / "data")
        build_comic_dataset(root, resolution=resolution, **d.build_args)
        return DataSources(d.manifest or str(root / "train"), d.eval_manifest or str(root / "eval"))
    if d.photos:
        from sanaedit.train.control_data import build_photo_pairs

        c = cfg.train.controlnet
        root = Path(d.root or Path(cfg.output_dir) / "data")
        train = build_photo_pairs(d.photos, root, resolution, c.targets, c.teacher or cfg.model.from_,
                                  progress=cfg.log.progress)  # fmt: skip
        return DataSources(str(train), d.eval_manifest)
    return DataSources(d.manifest, d.eval_manifest)


def build_dataset(cfg: StageConfig, stage: Stage, resolution: int) -> tuple[SampleDataset, DataSources]:
    """The stage's training samples, and the manifests they (and the previews) come from."""
    d = cfg.data
    sources = resolve_sources(cfg, resolution)
    common = dict(kind=stage.data, resolution=resolution, skip_bad=d.skip_bad, default_prompt=d.default_prompt)
    if d.hf:
        from sanaedit.train.data import HFDataset

        return HFDataset(d.hf, split=d.split, columns=d.columns, **common), sources
    if not sources.manifest:
        raise ValueError("config needs data.manifest (a JSONL/CSV manifest or its folder) or data.hf")
    return ManifestDataset(sources.manifest, **common), sources


def tensor_digest(modules: list[nn.Module | torch.Tensor]) -> str:
    h = hashlib.sha256()
    for m in modules:
        tensors = [m] if isinstance(m, torch.Tensor) else list(m.state_dict().values())
        for t in tensors:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def pre_encoded(dataset: SampleDataset, parts: TrainParts, cache_dir: Path, progress: bool = True) -> LatentDataset:
    """The dataset's latents (and, with frozen queries, the LLM features of its prompts), encoded once into
    `cache_dir` by the frozen autoencoder; a cache of other data or other weights is rebuilt."""
    frozen_text = parts.cache_text
    te = parts.text_encoder
    fingerprint = "-".join(
        [
            dataset.fingerprint(),
            tensor_digest([parts.vae]),
            tensor_digest([te.llm, te.meta_queries]) if frozen_text else "",
        ]
    )
    encode_text: Callable[[list[str]], torch.Tensor] | None = te.llm_features if frozen_text else None
    reused = cache_matches(cache_dir, fingerprint)  # a resumed run (or a rerun) finds the first run's cache
    cache = pre_encode(dataset, cache_dir, parts.encode_images, fingerprint, encode_text=encode_text, progress=progress)
    latents = LatentDataset(cache)
    latents.reused = reused
    return latents
