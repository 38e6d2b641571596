"""Optimizer and learning-rate schedule: CAME with SANA's settings (AdamW as an option), warm-up then constant.

SANA trains with `came_pytorch.CAME(lr=1e-4, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), weight_decay=0)`,
gradient clipping at 0.1 and a linear warm-up (2000 steps at full scale) followed by a constant rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = ("came", "adamw")
SANA_CAME = dict(betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), weight_decay=0.0)


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    name: str = "came",
    lr: float = 1e-4,
    **overrides: Any,
) -> torch.optim.Optimizer:
    """The optimizer over the parameters that require grad; `params` may be torch's param groups (dicts with
    "params" and their own settings, e.g. "lr")."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (check the stage's `trainable` list)")
    if name == "came":
        try:
            from came_pytorch import CAME
        except ImportError as err:
            raise ImportError("optimizer 'came' needs came-pytorch: pip install 'sanaedit[train]'") from err
        settings = {**SANA_CAME, **overrides}
        settings["betas"], settings["eps"] = tuple(settings["betas"]), tuple(settings["eps"])
        return CAME(params, lr=lr, **settings)
    if name == "adamw":
        settings = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **overrides}
        settings["betas"] = tuple(settings["betas"])
        return torch.optim.AdamW(params, lr=lr, **settings)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup to lr over `warmup_steps` optimizer steps, then constant."""
    warmup = max(0, int(warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
