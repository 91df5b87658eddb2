"""The prediction cache: outputs per (model, version, input) within a byte budget, CLOCK eviction.

A query whose identical twin is already in flight waits on the same future instead of being sent
again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

# Per-entry bookkeeping that the byte budget charges besides the key and output.
_ENTRY_OVERHEAD_BYTES = 96

CacheKey = tuple[str, str, bytes]


@dataclass(slots=True)
class _Entry:
    future: asyncio.Future[str]
    size_bytes: int
    referenced: bool = False


class PredictionCache:
    def __init__(self, budget_bytes: int) -> None:
        self._budget_bytes = budget_bytes
        self._used_bytes = 0
        # Insertion order is the clock's ring: the front is where the hand points.
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._pending: dict[CacheKey, asyncio.Future[str]] = {}
        self.lookups = 0
        self.hits = 0

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: CacheKey) -> asyncio.Future[str] | None:
        """A done future on a hit, a pending one when the same query is in flight, else None."""
        self.lookups += 1
        entry = self._entries.get(key)
        if entry is not None:
            entry.referenced = True
            self.hits += 1
            return entry.future
        return self._pending.get(key)

    def start(self, key: CacheKey) -> asyncio.Future[str]:
        """Registers a query about to be sent; twins looked up meanwhile share its future."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        future.add_done_callback(lambda f: self._settle(key, f))
        return future

    def _settle(self, key: CacheKey, future: asyncio.Future[str]) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
        if future.cancelled() or future.exception() is not None:
            return  # failures are not cached: the next identical query tries again
        size = len(key[2]) + len(future.result()) + _ENTRY_OVERHEAD_BYTES
        if size > self._budget_bytes or key in self._entries:
            return
        self._evict_until(self._budget_bytes - size)
        self._entries[key] = _Entry(future, size)
        self._used_bytes += size

    def _evict_until(self, target_bytes: int) -> None:
        while self._used_bytes > target_bytes and self._entries:
            key, entry = self._entries.popitem(last=False)
            if entry.referenced:
                entry.referenced = False  # second chance: back behind the hand
                self._entries[key] = entry
            else:
                self._used_bytes -= entry.size_bytes
