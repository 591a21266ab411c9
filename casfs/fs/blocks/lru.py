"""The blocks held in memory: an LRU by bytes, and the cache's counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cachetools

from casfs.cas.client import Chunk
from casfs.digest import Digest

BlockKey = tuple[Digest, int]  # (blob, block index)


@dataclass
class CacheStats:
    """Counters for ``casfs status``, the metrics and tests."""

    hits: int = 0  # block lookups answered from memory at once
    waits: int = 0  # block lookups that waited for a fetch (their own or a readahead's)
    misses: int = 0
    prefetches: int = 0
    runs: int = 0
    direct_reads: int = 0
    fetched_bytes: int = 0
    evictions: int = 0


class BlockLRU(cachetools.LRUCache[BlockKey, Chunk]):
    """Blocks by key, least recently used evicted first once ``capacity`` bytes are held;
    ``evicted`` hears of each eviction (not of a block taken out on purpose)."""

    def __init__(
        self, capacity: int, stats: CacheStats, evicted: Callable[[BlockKey], None]
    ) -> None:
        super().__init__(maxsize=capacity, getsizeof=len)
        self._stats = stats
        self._evicted = evicted

    def popitem(self) -> tuple[BlockKey, Chunk]:
        self._stats.evictions += 1
        key, data = super().popitem()
        self._evicted(key)
        return key, data
