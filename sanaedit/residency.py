"""Staged residency: each network in memory only while its stage of an edit runs.

The CPU counterpart of diffusers' `enable_model_cpu_offload`: there the weights wait in CPU memory while the GPU
runs another model; here they wait in the model folder, and the peak is the largest stage (the DiT, or half the
DC-AE) instead of the sum of all of them. Each edit reads each network once more from the folder, which a
one-photo CLI edit does anyway; a server keeps everything resident instead.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STAGED_NETWORKS = ("encoder", "transformer", "decoder")  # FlowModel attributes, in the order an edit needs them


class OnDisk:
    """Stands in for a network that waits in the model folder between stages."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"the {self.name} is not in memory (staged residency loads it only inside its stage of an edit); "
            "load the pipeline without staged residency to call it directly"
        )

    def __repr__(self) -> str:
        return f"OnDisk({self.name!r})"


@contextmanager
def resident(holder: Any, name: str, load: Callable[[str], Any]) -> Iterator[Any]:
    """`holder.<name>` loaded for the duration of the block, then back on disk and its memory given back."""
    from .speed.lowmem import release_freed_memory

    setattr(holder, name, load(name))
    try:
        yield getattr(holder, name)
    finally:
        setattr(holder, name, OnDisk(name))
        gc.collect()  # modules hold reference cycles (hooks, parametrizations): free them now, not later
        release_freed_memory()
