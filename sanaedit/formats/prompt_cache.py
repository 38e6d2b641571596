"""The prompt cache (`prompt_cache.safetensors`): the final conditioning of a model's fixed prompts, so runs with them
never need the LLM. One format for every folder kind: torch tensors in a model folder, NumPy arrays in an export."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanaedit.core.tempfiles import replacing
from sanaedit.errors import ModelFolderError
from sanaedit.formats.index import PROMPT_CACHE_FILE

if TYPE_CHECKING:
    import torch


def save_prompt_cache(
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]], model_dir: Path, metadata: dict[str, str] | None = None
) -> Path:
    """entries: prompt text -> (encoder_hidden_states [1,N,C], encoder_attention_mask [1,N]), torch tensors or NumPy
    arrays (exported graphs). `metadata`: more string entries for the file's header (a release's cache: the key of
    the files it was computed from). The one writer of the format, atomically (a temporary beside it, renamed over
    it), readable by all (0644)."""
    import numpy as np

    tensors, prompts = {}, []
    for i, (prompt, (hidden, mask)) in enumerate(entries.items()):
        tensors[f"{i}.hidden"], tensors[f"{i}.mask"] = hidden, mask
        prompts.append(prompt)
    header = {**(metadata or {}), "prompts": json.dumps(prompts)}
    path = Path(model_dir) / PROMPT_CACHE_FILE
    with replacing(path) as (fd, tmp):
        os.close(fd)
        if all(isinstance(t, np.ndarray) for t in tensors.values()):  # exported graphs' (no torch needed)
            from safetensors.numpy import save_file

            tensors = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
        else:  # torch tensors (a bf16 cache has no NumPy dtype)
            import torch
            from safetensors.torch import save_file

            tensors = {k: torch.as_tensor(t).detach().contiguous().cpu() for k, t in tensors.items()}
        save_file(tensors, tmp, metadata=header)
    return path


def write_prompt_cache(
    folder: Path, encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]], prompts: list[str]
) -> None:
    """Store the conditioning of `prompts` (a model's fixed prompt and negative prompt), so later runs with them
    never need the LLM. `encode` is the pipeline's text path."""
    from sanaedit.core.arrays import no_grad

    entries = {p: tuple(t[:1] for t in no_grad(encode)([p])) for p in dict.fromkeys(prompts)}
    save_prompt_cache(entries, folder)


def load_prompt_cache(
    model_dir: Path, match: dict[str, str] | None = None, framework: str = "pt"
) -> dict[str, tuple[Any, Any]]:
    """The cache `save_prompt_cache` wrote, as torch tensors (`framework` "pt") or NumPy arrays ("np": exported
    graphs, without torch); empty when absent, or when its header lacks an entry of `match`."""
    path = Path(model_dir) / PROMPT_CACHE_FILE
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, framework) as f:
            metadata = f.metadata() or {}
            if any(metadata.get(k) != v for k, v in (match or {}).items()):
                return {}  # computed from other files: computed again
            prompts = json.loads(metadata["prompts"])
            return {p: (f.get_tensor(f"{i}.hidden"), f.get_tensor(f"{i}.mask")) for i, p in enumerate(prompts)}
    except Exception as err:
        raise ModelFolderError(f"{path}: unreadable prompt cache ({err}); delete it to recompute") from err
