"""The frozen LLM as an exportable graph: (inputs_embeds, attention_mask) -> the meta-query features.

transformers builds its causal mask and rotary tables with code that neither ONNX exporter traces into a graph both
runtimes accept, so this wrapper builds them from plain ops (Range, compare, CumSum, Cos/Sin) and calls the model's
own decoder layers and final norm with eager attention. It computes exactly what `MetaQueryTextEncoder.llm_features`
asks of transformers: a causal mask with padded text keys masked, `position_ids = cumsum(mask) - 1`, the
final-norm hidden states of the last `num_queries` positions. The token embedding table stays out of the graph (a
lookup, stored beside it; see export/folder.py).
"""

from __future__ import annotations

import torch
from torch import nn

MASKED = -1e9  # added to a masked score: exp() underflows to exactly 0, with no -inf arithmetic in the graph


class LlmFeatures(nn.Module):
    def __init__(self, llm: nn.Module, num_queries: int):
        super().__init__()
        body = llm.base_model
        if getattr(body, "has_sliding_layers", False):
            raise ValueError("LLMs with sliding-window layers are not supported by the LLM graph export")
        if getattr(body.rotary_emb, "rope_type", "default") != "default":
            raise ValueError(f"rope type {body.rotary_emb.rope_type!r} is not supported by the LLM graph export")
        self.config = body.config
        self.layers = body.layers[: body.config.num_hidden_layers]
        self.norm = body.norm
        self.register_buffer("inv_freq", body.rotary_emb.inv_freq.detach().float().clone(), persistent=False)
        self.rope_scale = float(body.rotary_emb.attention_scaling)
        self.num_queries = num_queries

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]: queries continue right after the real tokens
        freqs = positions[..., None] * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        rope = (
            (angles.cos() * self.rope_scale).to(inputs_embeds.dtype),
            (angles.sin() * self.rope_scale).to(inputs_embeds.dtype),
        )
        index = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        causal = (index[None, :] <= index[:, None]).to(torch.float32)  # [L, L]: key <= query
        allowed = causal[None, None] * mask[:, None, None, :]  # padded text keys masked for every query
        bias = ((1 - allowed) * MASKED).to(inputs_embeds.dtype)
        saved = self.config._attn_implementation
        self.config._attn_implementation = "eager"  # plain MatMul/Softmax: what both runtimes convert
        try:
            hidden = inputs_embeds
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=bias, position_embeddings=rope, position_ids=positions.long())
        finally:
            self.config._attn_implementation = saved
        return self.norm(hidden)[:, -self.num_queries :]
