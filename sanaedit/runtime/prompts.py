"""The pipeline's text conditioning: each prompt's through the prompt cache, else the LLM path (batched), the cache
bounded. A mixin on the pipeline (its `prompt_cache`, `text_encoder`, `keep_text_encoder`, `release_text_encoder`,
`config`, `flow`)."""

from __future__ import annotations

from sanaedit.core.arrays import no_grad
from sanaedit.core.sampling import Array

PROMPT_CACHE_SIZE = 64  # conditioning tensors kept in memory (a 0.6B model's are 256 x 2304 floats, 2.4 MB each)


class PromptsMixin:
    @no_grad
    def encode_prompt(self, prompts: list[str]) -> tuple[Array, Array]:
        """Conditioning for each prompt, from the prompt cache where possible, else through the LLM (batched)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.prompt_cache]
        if missing:
            hidden, mask = self.text_encoder(missing)
            if not self.keep_text_encoder:
                self.release_text_encoder()
            for i, p in enumerate(missing):
                self.prompt_cache[p] = (hidden[i : i + 1], mask[i : i + 1])
            # bounded: a server fed user prompts must not grow without limit. The oldest entries go first; the
            # model's own prompts stay (they are what spares loading the LLM at all).
            pinned = {self.config.prompt, self.config.negative_prompt, *prompts}
            evictable = [p for p in self.prompt_cache if p not in pinned]
            for p in evictable[: max(0, len(self.prompt_cache) - PROMPT_CACHE_SIZE)]:
                del self.prompt_cache[p]
        arrays = self.flow.arrays
        hidden = arrays.input(arrays.cat([self.prompt_cache[p][0] for p in prompts]))
        mask = arrays.cat([self.prompt_cache[p][1] for p in prompts])
        return hidden, mask
