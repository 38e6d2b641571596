"""What bounds the server's memory and what one client may hold: a decode-memory budget, per-client upload slots,
and handing freed memory back to the system.

The budget is hand-written because nothing in starlette / anyio limits concurrent work by *size*: anyio's
CapacityLimiter counts tasks, and one 40-megapixel decode costs as much as a hundred small ones.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MemoryBudget:
    """At most `limit` bytes of (estimated) decoding at once; a decode larger than the limit runs alone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._changed: asyncio.Condition | None = None

    @asynccontextmanager
    async def hold(self, cost: int) -> AsyncIterator[None]:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + cost <= self.limit)
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._changed:
                self.used -= cost
                self._changed.notify_all()


class ClientSlots:
    """How many uploads each client (by IP address) has in progress; at most `per_client` at once, so a client that
    opens uploads and stalls them cannot take every place in the queue. Used from the event loop only."""

    def __init__(self, per_client: int):
        self.per_client = per_client
        self.held: Counter[str] = Counter()

    def take(self, client: str) -> bool:
        if self.held[client] >= self.per_client:
            return False
        self.held[client] += 1
        return True

    def give_back(self, client: str) -> None:
        self.held[client] -= 1
        if self.held[client] <= 0:
            del self.held[client]


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the system. glibc keeps freed blocks in its arenas (one per thread that
    allocated; decodes run on a thread pool), so after a large decode or a job the process's RSS would otherwise
    stay at its peak. malloc_trim(0) returns the free pages of every arena; elsewhere this does nothing."""
    if _TRIM is not None:
        _TRIM(0)
