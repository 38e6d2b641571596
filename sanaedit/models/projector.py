"""Projector: LLM width -> the DiT's caption width.

The published editor's projector is a single biased `Linear(1024, 2304)`; the DiT's own `caption_projection`
(Linear -> GELU(tanh) -> Linear) and `caption_norm` (RMSNorm, weight started at 0.01) follow inside the
transformer. `mlp=True` gives the MetaQuery-paper projector (Linear -> GELU(tanh) -> Linear -> RMSNorm) instead.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class Projector(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, in_features: int = 1024, out_features: int = 2304, mlp: bool = False):
        super().__init__()
        if mlp:
            self.net = nn.Sequential(
                nn.Linear(in_features, out_features),
                nn.GELU(approximate="tanh"),
                nn.Linear(out_features, out_features),
                nn.RMSNorm(out_features, eps=1e-5),
            )
        else:
            self.net = nn.Sequential(nn.Linear(in_features, out_features))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)
