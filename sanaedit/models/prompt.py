"""What the frozen LLM reads: the chat template, tokenization and [prompt tokens ; meta-queries].

Shared by the PyTorch text encoder and the exported runtime, and kept free of diffusers and transformers imports
so an exported folder runs without them.
"""

from __future__ import annotations

import torch

# The published editor's Qwen chat template. `<|vision_bos|>` is not a Qwen3 special token: it tokenizes as text.
PROMPT_TEMPLATE = "<|im_start|>user\nGenerate an image: {prompt}<|im_end|>\n<|im_start|>assistant\n<|vision_bos|>"
QWEN_PAD_ID = 151643  # <|endoftext|>, the published runtime's right-padding id


def tokenize(tokenizer, template: str, prompts: list[str], max_tokens: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts in the chat template -> (input_ids, attention_mask), right padded with Qwen's pad id."""
    texts = [template.replace("{prompt}", p) for p in prompts]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = QWEN_PAD_ID if len(tokenizer) > QWEN_PAD_ID else tokenizer.eos_token_id
    enc = tokenizer(
        texts,
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_tokens,
        add_special_tokens=False,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


def llm_inputs(
    token_embeds: torch.Tensor, text_mask: torch.Tensor, meta_queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[token embeddings ; meta-queries] and its mask: what the LLM reads (the PyTorch and exported paths alike)."""
    batch = token_embeds.shape[0]
    queries = meta_queries.to(token_embeds.dtype).expand(batch, -1, -1)
    mask = torch.cat([text_mask, text_mask.new_ones(batch, meta_queries.shape[0])], dim=1)
    return torch.cat([token_embeds, queries], dim=1), mask
