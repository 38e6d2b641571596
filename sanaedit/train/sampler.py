"""What a training step reads and draws, as pure functions of (seed, stream position).

Micro-step m on rank r of `world` processes reads stream positions [(m * world + r) * B, ... + B): all ranks
together read consecutive global batches, and a resumed run reads exactly what the uninterrupted one would have.
The stream is an endless sequence of seeded per-epoch permutations of the dataset. The noise, t and text-dropout
draws of a sample are seeded by its stream position, so they do not depend on how the global batch is split over
processes (DDP 2 x 2 == 1 x 4) or where a run resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from sanaedit.core.flow import sample_t
from sanaedit.train.config import TrainSettings


def first_position(micro: int, batch: int, rank: int = 0, world: int = 1) -> int:
    """Stream position of the first sample of micro-step `micro` on `rank`."""
    return (micro * world + rank) * batch


class StreamBatches(Sampler[list[int]]):
    """Batches of a seeded, endless, epoch-permuted stream of indices, for micro-steps [start, stop)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)))
        return int(self._perm[1][pos])

    def __iter__(self) -> Iterator[list[int]]:
        for m in range(self.start, self.stop):
            first = first_position(m, self.batch, self.rank, self.world)
            yield [self._index(k) for k in range(first, first + self.batch)]

    def __len__(self) -> int:
        return self.stop - self.start


def sample_draws(
    seed: int, position: int, shape: tuple[int, ...], train: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(t [1], noise `shape`, text dropped?) of the sample at global stream `position`."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + position)
    t = sample_t(1, gen, train.t_sampling, train.shift)
    noise = torch.randn(shape, generator=gen)
    return t, noise, bool(torch.rand(1, generator=gen) < train.text_dropout)


def distill_draws(seed: int, position: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """(uniform [1], noise `shape`, normal [1], noise `shape`) for the distill stage: which noise level to train at,
    the fresh noise of the few-step sampler's re-noising, and LADD's noise level and noise. A stream of their own,
    so the other draws stay what they were (and the first two what they were before LADD drew after them)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + position + (1 << 48))
    level_u, fresh = torch.rand(1, generator=gen), torch.randn(shape, generator=gen)
    return level_u, fresh, torch.randn(1, generator=gen), torch.randn(shape, generator=gen)


def control_draws(seed: int, position: int, dropout: float) -> bool:
    """Whether the controlnet stage trains the sample at global stream `position` on an empty control image
    (conditioning dropout). A stream of its own, so the other draws stay what they are."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + position + (2 << 48))
    return bool(torch.rand(1, generator=gen) < dropout)
