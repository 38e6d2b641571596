"""Processes launched together to share one batch (`accelerate launch`, torchrun, mpirun): where this one stands
among them, its share, and the meeting points where they exchange plans, failures and results (batch.py).

A plain run is process 0 of 1: nothing is imported and torch.distributed is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sanaedit.errors import OtherProcessFailed


def _reason(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


@dataclass
class Processes:
    """This process's place among processes launched together to share one batch (`accelerate launch`,
    `torchrun`): process `index` of `count`, `local_index` of `local_count` on this machine. The default, 0 of 1,
    shares nothing and never touches torch.distributed (`launched_processes` makes the others)."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    local_count: int = 1
    met: bool = False  # past the first meeting point (`agree`): from there on each process fails on its own

    @property
    def many(self) -> bool:
        return self.count > 1

    @property
    def main(self) -> bool:
        return self.index == 0

    def share(self, items: list) -> list:
        """This process's share: every `count`-th item from the `index`-th (disjoint, the same on every run)."""
        return items[self.index :: self.count]

    def gather(self, obj) -> list:
        """Every process's `obj` (picklable), in process order, on every process: all of them must call it."""
        if not self.many:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def _meet(self, error: Exception | None, payload=None) -> list:
        if not self.many:
            if error is not None:
                raise error
            return [payload]
        answers = self.gather((None if error is None else _reason(error), payload))
        self.met = True
        failed = [(i, why) for i, (why, _) in enumerate(answers) if why is not None]
        if failed and not self.main:
            raise OtherProcessFailed(f"process {failed[0][0]} of {self.count} failed")
        if failed:
            if error is not None:
                raise error
            raise RuntimeError("; ".join(f"process {i} of {self.count}: {why}" for i, why in failed))
        return [p for _, p in answers]

    def agree(self, error: Exception | None = None) -> None:
        """A meeting point of all the processes, each saying whether it got there well. If any did not, all stop:
        process 0 raises (its own error, or one naming the processes that failed and why), the others raise
        `OtherProcessFailed`; so a process that fails never leaves the others waiting for it."""
        self._meet(error)

    def from_main(self, fn: Callable):
        """`fn()` run by process 0 only, its result handed to every process (errors as in `agree`)."""
        if not self.many:
            return fn()
        result = error = None
        if self.main:
            try:
                result = fn()
            except Exception as err:
                error = err
        return self._meet(error, result)[0]

    def close(self) -> None:
        if self.many:
            from accelerate import PartialState

            PartialState().destroy_process_group()


# how many processes a launcher started together: torchrun and accelerate's GPU launch (WORLD_SIZE), mpirun (the
# others: accelerate's multi-CPU launch)
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_count() -> int:
    """How many processes were launched together with this one (1: a plain run), from the launchers' variables."""
    for name in WORLD_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launched_processes(cpu: bool = True) -> Processes:
    """This process's place when launched as several (`accelerate launch`, torchrun, mpirun), through accelerate's
    PartialState (torch.distributed: gloo with `cpu`, else the accelerator's, e.g. NCCL). A plain run gets
    `Processes()`: nothing imported, nothing set up."""
    world = launched_count()
    if world <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=cpu, **({"backend": "gloo"} if cpu else {}))
    if state.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes, but accelerate set up {state.num_processes} "
            "(no distributed backend for this device? on CPUs give --device cpu)"
        )
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    local_count = int(local) if local.isdigit() and int(local) > 0 else state.num_processes
    return Processes(state.process_index, state.num_processes, state.local_process_index, local_count)
