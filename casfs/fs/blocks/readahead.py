"""Readahead: a file's read pattern, and the streaming runs that fetch the blocks ahead.

A run fetches consecutive blocks with one streaming ranged Read (a Read per block costs a
round trip and about a millisecond of CPU each); every block of the run has its flight,
fulfilled as its bytes arrive. At most ``streams`` runs are in flight, and a run starts
only when less than half the window ahead is covered, so runs stay long.

Concurrency notes: runs are tasks in the cache's nursery. A run owns the flights it
registered until it delivers or fails each of them: whatever ends it (an error, the
stream coming up short, cancellation when the mount ends) fails the ones still pending,
so no reader waits forever.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import trio

from casfs.cas.client import Chunk
from casfs.digest import Digest
from casfs.fs.blocks.disk import DiskTier
from casfs.fs.blocks.flight import Flight
from casfs.fs.blocks.lru import BlockKey, CacheStats
from casfs.fs.blocks.verify import Verification

log = logging.getLogger("casfs.fs")


class BlobSource(Protocol):
    """Where blocks come from: a ``CasClient`` or ``TvixRemote`` for one instance.

    ``ranged``: whether reading a range of the blob costs that range only. A source that
    streams the blob from its start for any range (tvix's Read of a blob in one piece) is
    read through the cache's blocks only, never around them, so that a read's bytes and
    those that streamed past it are kept, and concurrent readers wait on one stream."""

    def ranged(self, digest: Digest) -> bool: ...

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes: ...

    def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[Chunk]: ...


@dataclass
class Readahead:
    """Per open file: where a sequential reader will read next, and how far to look ahead.

    The window doubles on every read that continues the stream (a little reordering by
    concurrent kernel requests still counts) and collapses to nothing on a seek, so random
    access fetches only the bytes it touches.
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


class Flights(Protocol):
    """What runs need of the cache."""

    block_size: int

    def covered(self, digest: Digest, index: int) -> bool: ...

    def new_flight(self, key: BlockKey) -> Flight: ...

    def fail(self, key: BlockKey, flight: Flight, error: Exception | None) -> None: ...


class Prefetcher:
    """Starts runs for the blocks ahead of sequential readers, ``streams`` at a time."""

    def __init__(
        self,
        flights: Flights,
        verification: Verification,
        stats: CacheStats,
        nursery: trio.Nursery,
        streams: int,
        disk: DiskTier | None = None,
    ) -> None:
        self._flights = flights
        self._disk = disk
        self._verification = verification
        self._stats = stats
        self._nursery = nursery
        self._streams = trio.CapacityLimiter(streams)

    def prefetch(self, source: BlobSource, digest: Digest, first: int, count: int) -> None:
        """Make sure blocks ``[first, first + count)`` are cached or coming (past the end of
        the blob: nothing). Starts one streaming run for the missing ones, unless more than
        half of them are already on their way."""
        covered = self._flights.covered
        last = min(first + count, (digest.size - 1) // self._flights.block_size + 1)
        start = first
        while start < last and covered(digest, start):
            start += 1
        if start >= last or (start - first >= count // 2 and count > 1):
            return
        if start == 0:
            self._verification.start(digest)
        run: list[tuple[BlockKey, Flight]] = []
        for index in range(start, last):
            if covered(digest, index):
                break
            key = (digest, index)
            run.append((key, self._flights.new_flight(key)))
        self._stats.prefetches += len(run)
        self._stats.runs += 1
        self._nursery.start_soon(self._run, source, digest, run)

    async def _run(
        self, source: BlobSource, digest: Digest, run: list[tuple[BlockKey, Flight]]
    ) -> None:
        """Land the run's blocks: those on disk from the disk, each stretch of those not on
        disk with one streaming Read, landing each block as soon as it is complete."""
        pending = list(run)
        deliver = self._verification.deliver
        try:
            while pending:
                count = len(pending)
                if self._disk is not None:  # what is on disk first, then what is not

                    async def land(blocks: list[Chunk]) -> None:
                        for data in blocks:
                            key, flight = pending.pop(0)
                            deliver(key, flight, data)
                        await self._verification.keep_up(digest)

                    indexes = [key[1] for key, _ in pending]
                    await self._disk.load_in_order(source, digest, indexes, land)
                    if not pending:
                        continue
                    count = await self._disk.absent(source, digest, [k[1] for k, _ in pending])
                part = pending[: max(1, count)]
                try:
                    await self._stream(source, digest, part)
                finally:
                    del pending[: max(1, count) - len(part)]
                if part:  # the stream came up short
                    break
        except Exception as error:
            log.debug("readahead of %s from block %d failed: %s", digest, run[0][0][1], error)
            for key, flight in pending:
                self._flights.fail(key, flight, error)
            pending.clear()
        finally:
            for key, flight in pending:  # cancelled, or the stream came up short
                self._flights.fail(key, flight, None)

    async def _stream(
        self, source: BlobSource, digest: Digest, pending: list[tuple[BlockKey, Flight]]
    ) -> None:
        """Fetch ``pending`` (consecutive blocks) with one streaming Read, taking each from
        the list as it is delivered (and queued for the disk)."""
        block_size = self._flights.block_size
        first = pending[0][0][1]
        deliver = self._verification.deliver
        disk = self._disk
        async with self._streams:
            stream = source.stream_range(digest, first * block_size, len(pending) * block_size)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                buffer = bytearray()
                async for chunk in stream:
                    self._stats.fetched_bytes += len(chunk)
                    if not buffer and len(chunk) == block_size:
                        key, flight = pending.pop(0)  # the common case: no copy
                        if disk is not None:
                            disk.keep(source, digest, key[1], chunk)
                        deliver(key, flight, chunk)
                    else:
                        buffer += chunk
                        while pending and len(buffer) >= block_size:
                            key, flight = pending.pop(0)
                            with memoryview(buffer) as view:
                                block = bytes(view[:block_size])
                            del buffer[:block_size]
                            if disk is not None:
                                disk.keep(source, digest, key[1], block)
                            deliver(key, flight, block)
                    await self._verification.keep_up(digest)  # hashing keeps up
                if pending and buffer:  # the blob's last, short block
                    key, flight = pending.pop(0)
                    if disk is not None:
                        disk.keep(source, digest, key[1], bytes(buffer))
                    deliver(key, flight, bytes(buffer))
