"""Text conditioning: a frozen causal LLM read through 256 learnable meta-queries.

LLM input = [prompt token embeddings ; meta-query embeddings] (embeddings, not vocabulary tokens), right padded,
with a pad-aware causal mask and `position_ids = cumsum(mask) - 1`, so a prompt gives the same features alone or
in a padded batch. The final-norm hidden states at the query positions go through the connector and projector
into the DiT's caption space.
"""

from __future__ import annotations

import torch
from torch import nn

from sanaedit.core.config import PROMPT_TEMPLATE
from sanaedit.models.connector import Connector
from sanaedit.models.projector import Projector
from sanaedit.models.prompt import llm_inputs, tokenize

__all__ = ["PROMPT_TEMPLATE", "MetaQueryTextEncoder", "init_meta_queries", "llm_inputs", "tokenize"]


def init_meta_queries(num_queries: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """OpenUni/MetaQuery initialisation: N(0, 1/width)."""
    return torch.randn(num_queries, width, generator=generator) / width**0.5


class MetaQueryTextEncoder(nn.Module):
    def __init__(
        self,
        llm: nn.Module,
        tokenizer,
        meta_queries: torch.Tensor,
        connector: Connector,
        projector: Projector,
        template: str = PROMPT_TEMPLATE,
        max_prompt_tokens: int = 300,
    ):
        super().__init__()
        width = llm.get_input_embeddings().embedding_dim
        if meta_queries.ndim != 2 or meta_queries.shape[1] != width:
            raise ValueError(f"meta_queries shape {tuple(meta_queries.shape)} does not match the LLM width {width}")
        if connector.config.width != width:
            raise ValueError(f"connector width {connector.config.width} != LLM width {width}")
        if projector.config.in_features != width:
            raise ValueError(f"projector in_features {projector.config.in_features} != LLM width {width}")
        if "{prompt}" not in template:
            raise ValueError("prompt template must contain '{prompt}'")
        self.llm = llm.requires_grad_(False).eval()  # frozen, always
        self.tokenizer = tokenizer
        self.meta_queries = nn.Parameter(meta_queries)
        self.connector = connector
        self.projector = projector
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens

    @property
    def num_queries(self) -> int:
        return self.meta_queries.shape[0]

    def train(self, mode: bool = True) -> MetaQueryTextEncoder:
        super().train(mode)
        self.llm.eval()  # no dropout in the frozen LLM, even while the queries train
        return self

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, self.template, prompts, self.max_prompt_tokens)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def llm_features(self, prompts: list[str]) -> torch.Tensor:
        """Final-norm LLM hidden states at the meta-query positions: [B, num_queries, width]."""
        device = self.meta_queries.device
        input_ids, text_mask = (t.to(device) for t in self.tokenize(prompts))
        token_embeds = self.llm.get_input_embeddings()(input_ids)
        inputs_embeds, mask = llm_inputs(token_embeds, text_mask, self.meta_queries)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # queries continue right after the real tokens
        out = self.llm.base_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state[:, -self.num_queries :]

    def condition(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM features -> (encoder_hidden_states, encoder_attention_mask) for the DiT."""
        features = features.to(self.projector.dtype)
        hidden = self.projector(self.connector(features))
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return hidden, mask

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.condition(self.llm_features(prompts))
