"""The release's LLM graph (`llm/llm.mnn`, written by MNN's LLM exporter) run through MNN's module API for its
hidden states: MNN's Python LLM API returns logits only and takes no embeddings, so the graph is driven directly.

What MNN's engine feeds it for the meta-query path (`sana_llm.hpp`): the prompt's token embeddings followed by the
meta-queries, a causal mask with padded text keys masked, `position_ids = cumsum(mask) - 1`; it keeps the last 256
rows of `hidden_states` (the final norm's output). One prompt per call here, unpadded: a padded row is masked out
of every query's attention, so each prompt's queries see exactly what they see in the engine's padded batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sanaedit import backends
from sanaedit.backends.mnn_graph import import_mnn, runtime_config
from sanaedit.core.arrays import to_numpy
from sanaedit.errors import ModelFolderError

INPUTS = ["input_ids", "attention_mask", "position_ids", "logits_index"]


class MnnLlm:
    """`llm(embeds [T, H], last) -> hidden states [last, H]` of `llm.mnn` (its weights beside it)."""

    def __init__(self, path: str | Path, threads: int | None = None, outputs: tuple[str, ...] = ("hidden_states",)):
        mnn_nn = import_mnn("MNN.nn")

        self.path = Path(path)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise ModelFolderError(f"{self.path}: the LLM graph is missing or empty")
        low_memory = "llm" in backends.MNN_LOW_MEMORY  # its 4-bit weights kept packed (MnnGraph's low_memory)
        self.runtime = mnn_nn.create_runtime_manager((runtime_config(threads, low_memory),))
        try:
            self.module = mnn_nn.load_module_from_file(
                str(self.path), INPUTS, list(outputs), runtime_manager=self.runtime, rearrange=True
            )
        except Exception:  # MNN reports a corrupt file as SystemError
            self.module = None
        if self.module is None:
            raise ModelFolderError(f"{self.path}: not a valid MNN LLM graph (corrupt, truncated or another format)")

    def __call__(self, embeds: Any, last: int) -> np.ndarray:
        mnn_expr = import_mnn("MNN.expr")

        length, width = embeds.shape
        mask = np.triu(np.full((length, length), np.finfo(np.float32).min, np.float32), 1)[None, None]
        arrays = [
            np.ascontiguousarray(to_numpy(embeds)[:, None, :]),  # [T, 1, H]
            np.ascontiguousarray(mask),  # additive: 0 where a key is visible
            np.arange(length, dtype=np.int32)[None],  # cumsum(mask) - 1 of an unpadded prompt
            np.array([-last], dtype=np.int32),  # only the last `last` rows go through the final norm
        ]
        kinds = [mnn_expr.float, mnn_expr.float, mnn_expr.int, mnn_expr.int]
        feed = [mnn_expr.const(a, list(a.shape), mnn_expr.NCHW, k) for a, k in zip(arrays, kinds)]
        out = self.module.forward(feed)
        if isinstance(out, (list, tuple)):
            if not out:  # what MNN does with a truncated weight file
                raise ModelFolderError(f"{self.path}: the LLM graph produced nothing (is llm.mnn.weight truncated?)")
            out = out[0]
        if out.data_format == mnn_expr.NC4HW4:
            out = mnn_expr.convert(out, mnn_expr.NCHW)
        hidden = np.array(out.read(), dtype=np.float32).reshape(-1, width)
        if hidden.shape[0] != last:
            raise ModelFolderError(f"{self.path}: returned {hidden.shape[0]} rows of hidden states, expected {last}")
        return hidden
