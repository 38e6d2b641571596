"""SANA-1.5 depth growth: a deeper DiT from a trained shallower one that edits exactly as the original.

Partial-preservation init, as NVlabs/Sana's `model_growth_utils.py` ("constant" strategy) describes it: every
non-block weight and blocks 0..N-1 are copied; each new block is appended with its three residual branches
closed (the self-attention and cross-attention output projections and the Mix-FFN point conv zeroed, their
biases 0), so it starts as the identity; the rest of a new block is drawn afresh (q/k norms 1, depthwise conv
N(0, 0.2), other weights N(0, 0.02)). Training then opens the new blocks (`sanaedit train` with `model.from`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

# Parameter names inside a diffusers SanaTransformerBlock
ZEROED = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.conv_point.")  # the residual branches' last layers


def _init_new_block(block: nn.Module, generator: torch.Generator) -> None:
    for name, param in block.named_parameters():
        if name.startswith(ZEROED) or name.endswith(".bias"):
            value = torch.zeros_like(param)
        elif name.startswith(("attn1.norm_q", "attn1.norm_k", "attn2.norm_q", "attn2.norm_k")):
            value = torch.ones_like(param)
        elif name.startswith("ff.conv_depth"):
            value = torch.randn(param.shape, generator=generator) * 0.2
        else:
            value = torch.randn(param.shape, generator=generator) * 0.02
        param.data.copy_(value.to(param.dtype))


@torch.no_grad()
def grow_transformer(transformer: nn.Module, num_layers: int, seed: int = 0) -> nn.Module:
    """A copy of `transformer` with `num_layers` blocks: the original ones, then identity-initialised new ones."""
    have = transformer.config.num_layers
    if num_layers <= have:
        raise ValueError(f"--layers {num_layers}: the model already has {have} blocks; growth adds blocks")
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    grown = type(transformer).from_config({**config, "num_layers": num_layers})
    if grown.dtype != transformer.dtype:
        grown = grown.to(transformer.dtype)
    missing, unexpected = grown.load_state_dict(transformer.state_dict(), strict=False)
    if unexpected or any(not k.startswith("transformer_blocks.") for k in missing):
        raise ValueError(f"cannot grow this transformer: unexpected {unexpected}, missing {missing}")
    generator = torch.Generator().manual_seed(seed)
    for block in grown.transformer_blocks[have:]:
        _init_new_block(block, generator)
    return grown.eval()


def grow_model(model_dir: str | Path, num_layers: int, out: str | Path, seed: int = 0) -> Path:
    """Write a copy of a model folder whose transformer has `num_layers` blocks (atomically; nothing else is
    loaded or changed: the autoencoder, text path and prompt cache are copied as they are)."""
    from sanaedit.backends.torch_loading import load_model
    from sanaedit.core.atomic import atomic_folder
    from sanaedit.formats.index import read_index
    from sanaedit.formats.torch_check import load_component
    from sanaedit.models.transformer import SanaEditTransformer2DModel

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"--out {out} is the model folder itself; choose another folder")
    read_index(model_dir)
    source = load_component(  # fp32: bf16 weights widen exactly; the grown folder is stored in fp32
        model_dir, "transformer", lambda p: load_model(SanaEditTransformer2DModel, p, torch.float32)
    )
    grown = grow_transformer(source, num_layers, seed)
    with atomic_folder(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("transformer"))
        grown.save_pretrained(tmp / "transformer")
    return out
