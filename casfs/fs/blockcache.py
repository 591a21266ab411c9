"""An LRU cache of blob blocks, with single-flight fetches and sequential readahead.

Blobs are immutable, so a cached block never goes stale: the only policy is LRU eviction
by bytes. Blocks are ``block_size`` bytes at ``index * block_size`` (the last one of a blob
is shorter).

Concurrency notes:

- All methods run in the mount's one trio thread; the dictionaries need no locks.
- A block is fetched at most once at a time: the first reader starts a *flight* in the
  cache's own nursery and every reader of that block waits on it. A reader that is
  cancelled stops waiting; the flight goes on for the others (and fills the cache).
- A failed flight caches nothing: each waiter gets the error, the next read tries again.
- A random read (the window is closed) that no cached block covers fetches just its own
  range, outside the cache and without a flight: its bytes go to the kernel's page cache.
- Prefetch flights run under a ``CapacityLimiter`` so readahead cannot starve demand
  reads or hold more than ``prefetch_concurrency`` blocks in flight. Memory is bounded by
  ``capacity`` plus the blocks in flight.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import cachetools
import trio

from casfs.cas.errors import CasError
from casfs.digest import Digest

log = logging.getLogger("casfs.fs")

# fetch(digest, offset, length): the bytes, clamped to the blob's end (CasClient.read_range).
Fetch = Callable[[Digest, int, int], Awaitable[bytes]]
_Key = tuple[Digest, int]


@dataclass
class CacheStats:
    """Counters for ``casfs status`` and tests."""

    hits: int = 0
    misses: int = 0
    prefetches: int = 0
    direct_reads: int = 0
    fetched_bytes: int = 0
    evictions: int = 0


class _Flight:
    """One fetch of one block, awaited by every reader that wants the block."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: Exception | None = None

    async def wait(self) -> bytes:
        await self.done.wait()
        if self.data is not None:
            return self.data
        if self.error is not None:
            raise self.error
        raise CasError("the fetch was cancelled (the mount is shutting down)")


class _Blocks(cachetools.LRUCache[_Key, bytes]):
    def __init__(self, capacity: int, stats: CacheStats) -> None:
        super().__init__(maxsize=capacity, getsizeof=len)
        self._stats = stats

    def popitem(self) -> tuple[_Key, bytes]:
        self._stats.evictions += 1
        return super().popitem()


@dataclass
class Readahead:
    """Per open file: where a sequential reader will read next, and how far to look ahead.

    The window doubles on every read that continues the stream (a little reordering by
    concurrent kernel requests still counts) and collapses to nothing on a seek, so random
    access fetches only the blocks it touches.
    """

    next_offset: int = 0
    window: int = 0  # blocks

    def advance(self, offset: int, size: int, *, max_window: int, slack: int) -> int:
        """Record a read; return how many blocks past it to prefetch."""
        if self.next_offset - slack <= offset <= self.next_offset + slack:
            self.window = min(max(1, self.window * 2), max_window)
        else:
            self.window = 0
        self.next_offset = max(offset + size, self.next_offset) if self.window else offset + size
        return self.window


class BlockCache:
    """Blocks of blobs in memory. Blobs are content-addressed, so a block is the same
    whichever instance (and so whichever ``fetch``) it came from."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        block_size: int,
        capacity: int,
        prefetch_concurrency: int = 8,
    ) -> None:
        # Blocks in flight count against the budget too: the LRU gets what is left.
        in_flight = (prefetch_concurrency + 2) * block_size
        if block_size <= 0 or capacity < in_flight + block_size:
            raise ValueError(
                f"a cache of {capacity} bytes cannot hold {prefetch_concurrency + 3} blocks"
            )
        self.block_size = block_size
        self.capacity = capacity
        self.stats = CacheStats()
        self._nursery = nursery
        self._blocks = _Blocks(capacity - in_flight, self.stats)
        self._flights: dict[_Key, _Flight] = {}
        self._prefetch_limiter = trio.CapacityLimiter(prefetch_concurrency)
        # Never look further ahead than a quarter of the cache or 64 MiB.
        self.max_window = max(1, min(capacity // 4, 64 << 20) // block_size)

    @property
    def cached_bytes(self) -> int:
        return int(self._blocks.currsize)

    def _flight(
        self, fetch: Fetch, digest: Digest, index: int, *, prefetch: bool
    ) -> _Flight | None:
        """The flight for a block: a running one, a new one, or None if it is cached."""
        key = (digest, index)
        if key in self._blocks:
            return None
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            self._flights[key] = flight
            if prefetch:
                self.stats.prefetches += 1
            else:
                self.stats.misses += 1
            self._nursery.start_soon(self._run_flight, fetch, key, flight, prefetch)
        return flight

    async def _run_flight(self, fetch: Fetch, key: _Key, flight: _Flight, prefetch: bool) -> None:
        digest, index = key
        limiter = self._prefetch_limiter if prefetch else contextlib.nullcontext()
        try:
            async with limiter:
                data = await fetch(digest, index * self.block_size, self.block_size)
            self.stats.fetched_bytes += len(data)
            self._blocks[key] = data
            flight.data = data
        except Exception as error:  # every waiter sees it; nothing is cached
            if prefetch:
                log.debug("prefetch of %s block %d failed: %s", digest, index, error)
            flight.error = error
        finally:
            del self._flights[key]
            flight.done.set()

    async def block(self, fetch: Fetch, digest: Digest, index: int) -> bytes:
        """One block, from the cache or fetched (once, however many readers ask)."""
        data = self._blocks.get((digest, index))
        if data is not None:
            self.stats.hits += 1
            return data
        flight = self._flight(fetch, digest, index, prefetch=False)
        if flight is None:  # pragma: no cover - the get above saw it missing
            return self._blocks[(digest, index)]
        return await flight.wait()

    def prefetch(self, fetch: Fetch, digest: Digest, first: int, count: int) -> None:
        """Start fetching ``count`` blocks from ``first`` in the background (past the end:
        nothing)."""
        last_block = (digest.size - 1) // self.block_size
        for index in range(first, min(first + count, last_block + 1)):
            self._flight(fetch, digest, index, prefetch=True)

    async def read(self, fetch: Fetch, digest: Digest, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the blob, clamped to its end."""
        end = min(offset + size, digest.size)
        if offset >= end:
            return b""
        size_ = self.block_size
        first, last = offset // size_, (end - 1) // size_
        if first == last:
            data = await self.block(fetch, digest, first)
            start = offset - first * size_
            if start == 0 and end - offset == len(data):
                return data
            return data[start : start + end - offset]
        for index in range(first, last + 1):  # start every fetch before waiting on any
            self._flight(fetch, digest, index, prefetch=False)
        pieces = []
        for index in range(first, last + 1):
            data = await self.block(fetch, digest, index)
            start = max(offset, index * size_) - index * size_
            stop = min(end, (index + 1) * size_) - index * size_
            pieces.append(memoryview(data)[start:stop])
        return b"".join(pieces)

    async def read_file(
        self, fetch: Fetch, digest: Digest, offset: int, size: int, readahead: Readahead
    ) -> bytes:
        """A read by an open file, whose pattern so far (``readahead``) decides the fetch.

        Sequential: whole blocks, and the blocks ahead as far as the window goes. Random:
        the cached blocks if they hold the range, else exactly the bytes asked for (a whole
        block would cost several times the request; the kernel's page cache keeps them).
        """
        window = readahead.advance(
            offset, size, max_window=self.max_window, slack=max(size, self.block_size)
        )
        if window:
            self.prefetch(fetch, digest, (offset + size - 1) // self.block_size + 1, window)
            return await self.read(fetch, digest, offset, size)
        end = min(offset + size, digest.size)
        if offset >= end:
            return b""
        touched = range(offset // self.block_size, (end - 1) // self.block_size + 1)
        if all((digest, i) in self._blocks or (digest, i) in self._flights for i in touched):
            return await self.read(fetch, digest, offset, size)
        self.stats.direct_reads += 1
        data = await fetch(digest, offset, end - offset)
        self.stats.fetched_bytes += len(data)
        return data
