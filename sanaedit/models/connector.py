"""Connector: a bidirectional transformer encoder at the LLM width over the meta-query hidden states.

Layout of the published editor (OpenUni `ConnectorEncoder`): pre-LayerNorm layers, multi-head attention with
biased q/k/v/out, MLP width -> 4*width (GELU tanh) -> width, no positional embedding, no final norm.
torch's `nn.TransformerEncoderLayer` is exactly that block (and exports cleanly to ONNX), so we use it.
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class Connector(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, width: int = 1024, num_layers: int = 6, num_heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"connector width {width} is not divisible by num_heads {num_heads}")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=width,
                nhead=num_heads,
                dim_feedforward=int(width * mlp_ratio),
                dropout=0.0,
                activation=partial(nn.functional.gelu, approximate="tanh"),
                batch_first=True,
                norm_first=True,
            )
            for _ in range(num_layers)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states
