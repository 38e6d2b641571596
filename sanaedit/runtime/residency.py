"""Staged residency: each network in memory only while its stage of an edit runs.

The CPU counterpart of diffusers' `enable_model_cpu_offload`: there the weights wait in CPU memory while the GPU
runs another model; here they wait in the model folder, and the peak is the largest stage (the DiT, or half the
DC-AE) instead of the sum of all of them. Each edit reads each network once more from the folder, which a
one-photo CLI edit does anyway; a server keeps everything resident instead.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

STAGED_NETWORKS = ("encoder", "transformer", "decoder")  # FlowModel attributes, in the order an edit needs them
STAGE_WORDS = {"encoder": "encode", "transformer": "denoise", "decoder": "decode"}  # what each stage does, for -v

logger = logging.getLogger(__name__)


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
    from sanaedit.backends.torch_loading import release_freed_memory

    setattr(holder, name, load(name))
    try:
        yield getattr(holder, name)
    finally:
        setattr(holder, name, OnDisk(name))
        gc.collect()  # modules hold reference cycles (hooks, parametrizations): free them now, not later
        release_freed_memory()


class StagedResidencyMixin:
    """Staged residency for `SanaEditPipeline` (its `flow`, `config`, `device`, `dtype` and the `_network_loader`
    its factory gives it)."""

    _network_loader: Callable[[str, Any, Any], Any] | None = None  # (name, device, dtype) -> that network
    staged = False

    def enable_staged_residency(self) -> Any:
        """Keep each network in memory only while its stage of an edit runs (the CPU counterpart of diffusers'
        `enable_model_cpu_offload`: the weights wait in the model folder): the peak is the largest network, not
        the sum. Each edit reads them again, so it suits one-shot edits, not a server. Returns the pipeline."""
        if self._network_loader is None:
            raise ValueError(
                "staged residency reloads networks from their model folder: load the pipeline from a PyTorch model "
                "folder (exported graphs are memory-mapped by their runtime instead)"
            )
        if not self.staged:
            self.flow.placement = (self.device, self.dtype)
            for name in STAGED_NETWORKS:
                setattr(self.flow, name, OnDisk(name))
            self.flow.vae = None  # its halves are loaded by their own stages
            self.staged = True
        return self

    def enable_model_cpu_offload(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' name: on this CPU pipeline, see `enable_staged_residency` (nothing to offload to)."""
        raise NotImplementedError(
            "this pipeline runs on the CPU: use pipe.enable_staged_residency() (each network loaded from the model "
            "folder only for its stage), or `sanaedit edit --low-memory`"
        )

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Context in which the `name` network is resident (only while it runs with staged residency); its time is
        a debug line (`sanaedit -v`), so a user can see where an edit's seconds go."""
        start = time.perf_counter()
        with resident(self.flow, name, self._load_network) if self.staged else nullcontext():
            yield
        logger.debug(f"{STAGE_WORDS.get(name, name)}: {time.perf_counter() - start:.2f} s")

    def _load_network(self, name: str):
        network = self._network_loader(name, *self.flow.placement)  # where the pipeline is now, not where it loaded
        if name == "transformer" and self.config.fp16_clipping:
            network.set_fp16_clipping(True)
        return network

    def _staged_to(self, device: Any, dtype: Any) -> None:
        """`.to()` while staged: the networks on disk load at the new place in their stages."""
        import torch

        self.flow.placement = (torch.device(device or self.device), dtype or self.dtype)

    def _refuse_when_staged(self, what: str) -> None:
        if self.staged:
            raise ValueError(
                f"{what} needs the networks in memory, and staged residency keeps them in the model folder: load "
                "the pipeline again without it"
            )
