"""Exponential moving average of the trained weights (what the export uses when `train.ema` > 0)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` + 1: (1 + n) / (10 + n), capped at `decay` (diffusers' `EMAModel`
    without `use_ema_warmup`). Without the ramp the starting weights keep decay^steps of the average: 0.30 after
    1200 steps at 0.999, which turned a fresh light autoencoder's 25 dB reconstructions into 14 dB ones."""
    return min(decay, (1 + updates) / (10 + updates))


class EMA:
    """Why not diffusers' `EMAModel`: the shadow here is float32 whatever the trained weights' dtype (bf16 weights
    averaged in bf16 lose the small updates), and it rides in accelerate's checkpoints as is."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.params, self.decay, self.updates = params, decay, 0
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        decay = warmed_up_decay(self.decay, self.updates)
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint from before the ramp averaged at the full decay from its start: continue it that way.
        self.updates = state.get("updates", 10**9)
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (for samples and export)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)
