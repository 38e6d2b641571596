"""SANA-1.5 block pruning: a shallower DiT made of the blocks of a trained one that change its hidden states most.

Importance, as the SANA-1.5 paper (arXiv 2501.18427) measures it: how much a block changes what flows through it.
For every transformer block, the cosine similarity between its input and output hidden states (per token, over
the channels) is averaged over calibration photos and timesteps; a block whose output is nearly its input (high
similarity) matters least. The timesteps are the ones the model really meets: each calibration photo is edited
with the model's own sampler and settings (`flow_sigmas` of its step count, its own prompt), and every DiT call
of that trajectory is measured. importance = 1 - mean similarity.

The pruned transformer keeps the K most important blocks in their original order (renumbered 0..K-1) and every
non-block weight; the rest of the folder (autoencoder, text path, prompt cache) is copied as it is. The paper
fine-tunes the pruned model briefly (~100 steps); `finetune_folder` does that with `sanaedit.train` (stage 3,
transformer only).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sanaedit.image.folders import IMAGE_SUFFIXES, find_files
from sanaedit.image.io import load_image
from sanaedit.load import SAMPLE_PHOTO


def calibration_images(folder: str | Path | None = None, synthetic: int = 3, seed: int = 0) -> list[Image.Image]:
    """The photos of `folder` (every image file in it, sorted by name, as a batch lists them), or by default the
    bundled sample photo plus `synthetic` seeded synthetic scenes (gradients, shaded shapes, texture:
    `train.comic_data.synthetic_scene`)."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--calib {folder}: not a folder of calibration photos")
        files = find_files(folder)[0]
        if not files:
            raise ValueError(f"--calib {folder}: no images in it ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [load_image(p) for p in files]
    import numpy as np

    from sanaedit.image.photos import synthetic_scene

    rng = np.random.default_rng(seed)
    return [load_image(SAMPLE_PHOTO)] + [synthetic_scene(rng, 256) for _ in range(synthetic)]


@torch.no_grad()
def block_similarity(pipe, images: list[Image.Image], steps: int | None = None, seed: int = 0) -> list[float]:
    """Mean input/output cosine similarity of each transformer block over every DiT call made while editing
    `images` (the model's own settings; `steps` sampling steps, default the model's). One value per block."""
    blocks = pipe.transformer.transformer_blocks
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    calls = torch.zeros(len(blocks), dtype=torch.float64)

    def hook(index: int):
        def record(_module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            similarity = F.cosine_similarity(hidden.float(), output.float(), dim=-1)  # [batch, tokens]
            totals[index] += similarity.mean().item()
            calls[index] += 1

        return record

    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        for image in images:
            pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    finally:
        for handle in handles:
            handle.remove()
    if not calls.all():
        raise RuntimeError("no transformer call was measured: give at least one calibration image")
    return (totals / calls).tolist()


def blocks_to_keep(similarity: list[float], keep: int) -> list[int]:
    """Indices (ascending) of the `keep` blocks with the lowest input/output similarity. Ties drop later blocks."""
    have = len(similarity)
    if not 1 <= keep < have:
        raise ValueError(f"--keep {keep}: must be from 1 to {have - 1} (the model has {have} blocks)")
    order = sorted(range(have), key=lambda i: (-similarity[i], -i))  # most similar (least important) first
    return sorted(order[have - keep :])


@torch.no_grad()
def prune_transformer(transformer: nn.Module, kept: list[int]) -> nn.Module:
    """A copy of `transformer` with only the blocks `kept` (in that order, renumbered) and every other weight."""
    have = transformer.config.num_layers
    if not kept or len(set(kept)) != len(kept) or not all(0 <= i < have for i in kept):
        raise ValueError(f"blocks to keep {kept}: need distinct indices from 0 to {have - 1}")
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    pruned = type(transformer).from_config({**config, "num_layers": len(kept)})
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, weight in transformer.state_dict().items():
        if name.startswith("transformer_blocks."):
            _, index, rest = name.split(".", 2)
            if int(index) not in renumber:
                continue
            name = f"transformer_blocks.{renumber[int(index)]}.{rest}"
        state[name] = weight
    if pruned.dtype != transformer.dtype:
        pruned = pruned.to(transformer.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def num_blocks(model_dir: str | Path) -> int:
    """The transformer's block count, read from its config (nothing loaded)."""
    path = Path(model_dir) / "transformer" / "config.json"
    try:
        return int(json.loads(path.read_text())["num_layers"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{model_dir}: cannot read the transformer's num_layers from {path} ({err})") from None


def check_keep(model_dir: str | Path, keep: int) -> int:
    """Refuse a `keep` that prunes nothing or everything, before anything loads; returns the current block count."""
    have = num_blocks(model_dir)
    if keep >= have:
        raise ValueError(f"--keep {keep}: the model has {have} blocks; pruning keeps fewer (1 to {have - 1})")
    if keep < 1:
        raise ValueError(f"--keep {keep}: at least one block must stay (1 to {have - 1})")
    return have


def prune_model(
    model_dir: str | Path,
    keep: int,
    out: str | Path,
    calib: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Write a copy of a model folder whose transformer keeps its `keep` most important blocks (atomically; only
    transformer/ is rewritten). Returns {"similarity": per block, "kept": indices, "dropped": indices}."""
    from sanaedit.core.atomic import atomic_folder
    from sanaedit.formats.index import is_export, read_index
    from sanaedit.pipeline import SanaEditPipeline

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"--output {out} is the model folder itself; choose another folder")
    if is_export(model_dir):
        raise ValueError(f"{model_dir}: an exported folder; prune the PyTorch model folder, then export it")
    read_index(model_dir)
    have = check_keep(model_dir, keep)
    images = calibration_images(calib, seed=seed)
    pipe = SanaEditPipeline.from_pretrained(model_dir)  # fp32: the pruned folder is stored in fp32
    similarity = block_similarity(pipe, images, steps, seed)
    kept = blocks_to_keep(similarity, keep)
    pruned = prune_transformer(pipe.transformer, kept)
    with atomic_folder(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("transformer"))
        pruned.save_pretrained(tmp / "transformer")
    dropped = [i for i in range(have) if i not in kept]
    return {"similarity": similarity, "kept": kept, "dropped": dropped, "calibration_images": len(images)}


def finetune_folder(
    folder: str | Path,
    data: str | Path,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> Path:
    """Train a (pruned) model folder's transformer for `steps` on `data` (a folder with manifest.jsonl, or the
    manifest file) with `sanaedit.train` (stage 3, latents pre-encoded, CAME, no EMA) and replace the folder with the
    result, atomically. The same as `sanaedit train --model.from=FOLDER --data.manifest=DATA --train.steps=N
    --train.trainable=[transformer]`. The training run goes to a temporary folder beside FOLDER, removed after, or
    to `work_dir`, kept: its pre-encoded latents are reused by later runs on the same data and autoencoder."""
    from sanaedit.core.atomic import copy_folder
    from sanaedit.train.loop import train

    folder = Path(folder)
    manifest = Path(data)
    if not (manifest.is_file() or (manifest / "manifest.jsonl").is_file()):
        raise FileNotFoundError(f"--data {data}: no manifest.jsonl (a folder of source/target pairs)")
    if not lr > 0:
        raise ValueError(f"--lr {lr}: the fine-tune's learning rate must be > 0")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f".{folder.name}.finetune-", dir=folder.parent))
    try:
        config = {
            "output_dir": str(work),
            "seed": seed,
            "device": "auto",
            "model": {"from": str(folder)},
            "data": {"manifest": str(manifest), "pre_encode": True},
            "train": {
                "stage": "stage3",
                "trainable": ["transformer"],
                "steps": steps,
                "batch_size": batch_size,
                "optimizer": "came",
                "lr": lr,
                "grad_clip": 0.1,
            },
            "log": {"progress": False, "every": max(1, steps // 5)},
            "checkpoint": {"every": 0},
        }
        copy_folder(train(config), folder)
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return folder
