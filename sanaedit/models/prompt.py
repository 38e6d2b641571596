"""What the frozen LLM reads: the chat template, tokenization and [prompt tokens ; meta-queries].

Shared by the PyTorch text encoder and the exported runtime, and kept free of diffusers and transformers imports
so an exported folder runs without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


QWEN_PAD_ID = 151643  # <|endoftext|>, the published runtime's right-padding id


@dataclass(frozen=True)
class FastTokenizer:
    """The Rust tokenizer (`tokenizers.Tokenizer`, what transformers' fast tokenizers wrap) and its pad id: all that
    tokenizing a prompt needs, so an exported folder tokenizes without transformers or torch."""

    backend: Any
    pad_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> FastTokenizer:
        """A transformers fast tokenizer's backend, or a FastTokenizer as it is."""
        if isinstance(tokenizer, FastTokenizer):
            return tokenizer
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = _fallback_pad_id(len(tokenizer), tokenizer.eos_token_id)
        return cls(tokenizer.backend_tokenizer, int(pad_id))

    @classmethod
    def load(cls, folder: str | Path) -> FastTokenizer:
        """From a tokenizer folder's tokenizer.json and tokenizer_config.json (the pad token, else as `of`)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}

        def token_id(entry: Any) -> int | None:
            text = entry.get("content") if isinstance(entry, dict) else entry
            return backend.token_to_id(text) if isinstance(text, str) else None

        pad_id = token_id(config.get("pad_token"))
        if pad_id is None:
            pad_id = _fallback_pad_id(backend.get_vocab_size(with_added_tokens=True), token_id(config.get("eos_token")))
        if pad_id is None:
            raise ValueError(f"{folder}: the tokenizer has no pad or eos token")
        return cls(backend, int(pad_id))


def _fallback_pad_id(vocab_size: int, eos_id: int | None) -> int | None:
    """A tokenizer without a pad token pads with Qwen's (the published runtime's) where it has one, else with eos."""
    return QWEN_PAD_ID if vocab_size > QWEN_PAD_ID else eos_id


def tokenize(tokenizer: Any, template: str, prompts: list[str], max_tokens: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Prompts in the chat template -> (input_ids, attention_mask), int64 NumPy [B, T], right padded with the pad
    id and cut at `max_tokens`, as transformers' `tokenizer(..., padding=True, truncation=True)` gives them.
    `tokenizer`: a transformers fast tokenizer or a `FastTokenizer` (exported folders: no transformers)."""
    fast = FastTokenizer.of(tokenizer)
    # our call sets its own padding and truncation (transformers sets the backend's again before each of its calls)
    fast.backend.no_padding()
    fast.backend.no_truncation()
    texts = [template.replace("{prompt}", p) for p in prompts]
    ids = [e.ids[:max_tokens] for e in fast.backend.encode_batch(texts, add_special_tokens=False)]
    length = max(len(i) for i in ids)
    input_ids = np.full((len(ids), length), fast.pad_id, np.int64)
    mask = np.zeros((len(ids), length), np.int64)
    for row, i in enumerate(ids):
        input_ids[row, : len(i)], mask[row, : len(i)] = i, 1
    return input_ids, mask


def llm_inputs(
    token_embeds: torch.Tensor | np.ndarray,
    text_mask: torch.Tensor | np.ndarray,
    meta_queries: torch.Tensor | np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray]:
    """[token embeddings ; meta-queries] and its mask: what the LLM reads (the PyTorch and exported paths alike:
    torch tensors, or NumPy arrays for graphs)."""
    batch, queries = token_embeds.shape[0], meta_queries.shape[0]
    if isinstance(token_embeds, np.ndarray):
        rows = np.broadcast_to(meta_queries.astype(token_embeds.dtype), (batch, *meta_queries.shape))
        mask = np.concatenate([text_mask, np.ones((batch, queries), text_mask.dtype)], axis=1)
        return np.concatenate([token_embeds, rows], axis=1), mask
    import torch

    rows = meta_queries.to(token_embeds.dtype).expand(batch, -1, -1)
    mask = torch.cat([text_mask, text_mask.new_ones(batch, queries)], dim=1)
    return torch.cat([token_embeds, rows], dim=1), mask
