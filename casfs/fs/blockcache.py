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
- Readahead fetches a *run* of blocks with one streaming ranged Read (a Read per block
  costs a round trip and about a millisecond of CPU each); every block of the run has its
  flight, fulfilled as its bytes arrive. At most ``streams`` runs are in flight, and a
  run starts only when less than half the window ahead is covered, so runs stay long.
- A random read (the window is closed) that no cached block covers fetches just its own
  range, outside the cache and without a flight: its bytes go to the kernel's page cache.
- A block that a sequential reader has read to its end leaves the cache at once: the
  kernel's page cache has it (``keep_cache``), and its memory goes to the next block.
- A blob read from its start is verified: its blocks are hashed in order as they land
  (in a worker thread, see ``hashbehind``), and the run that brings the last block holds
  it back until the hash is known (outside the stream limiter: the runs before it may
  still wait for one). A mismatch fails that read (EIO), drops the blob's blocks and marks
  it corrupt for the life of the mount, so every later read that reaches casfs fails too
  (the page cache may still serve the blocks before the last); the log says why.
  Verification gives up quietly when the blocks stop coming in order (a reader that
  skips ahead, an eviction, a failed fetch): a random reader gets unverified bytes.
- Memory is bounded by ``capacity``: the LRU gets the capacity less what runs in flight
  may hold (one block being assembled per run, plus demand fetches). Blocks waiting to be
  hashed may outlive their eviction, within one ``ByteBudget`` (16 MiB) for all blobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import cachetools
import trio

from casfs.cas.client import Chunk
from casfs.cas.errors import CasError, DataLoss
from casfs.digest import Digest
from casfs.fs.behind import ByteBudget
from casfs.fs.hashbehind import HashBehind

log = logging.getLogger("casfs.fs")

_Key = tuple[Digest, int]
MAX_VERIFYING = 64  # blobs hashed at once, as readers read them from the start


class BlobSource(Protocol):
    """Where blocks come from: a ``CasClient`` for one instance."""

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes: ...

    def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[Chunk]: ...


@dataclass
class CacheStats:
    """Counters for ``casfs status`` and tests."""

    hits: int = 0  # block lookups answered from memory at once
    waits: int = 0  # block lookups that waited for a fetch (their own or a readahead's)
    misses: int = 0
    prefetches: int = 0
    runs: int = 0
    direct_reads: int = 0
    fetched_bytes: int = 0
    evictions: int = 0


class _Flight:
    """One fetch of one block, awaited by every reader that wants the block."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Chunk | None = None
        self.error: Exception | None = None

    async def wait(self) -> Chunk:
        await self.done.wait()
        if self.data is not None:
            return self.data
        if self.error is not None:
            raise self.error
        raise CasError("the fetch was cancelled (the mount is shutting down)")


class _Verifier:
    """A blob's hash, fed its blocks in order as they land."""

    def __init__(self, digest: Digest, nursery: trio.Nursery, budget: ByteBudget) -> None:
        self.hasher = HashBehind(digest.function, nursery, budget)
        self.next = 0  # the index of the next block to feed
        self.moved = trio.Event()

    def wake(self) -> None:
        self.moved.set()
        self.moved = trio.Event()


class _Blocks(cachetools.LRUCache[_Key, Chunk]):
    def __init__(
        self, capacity: int, stats: CacheStats, evicted: Callable[[_Key], None]
    ) -> None:
        super().__init__(maxsize=capacity, getsizeof=len)
        self._stats = stats
        self._evicted = evicted

    def popitem(self) -> tuple[_Key, Chunk]:
        self._stats.evictions += 1
        key, data = super().popitem()
        self._evicted(key)
        return key, data


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


class BlockCache:
    """Blocks of blobs in memory. Blobs are content-addressed, so a block is the same
    whichever instance (and so whichever source) it came from."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        block_size: int,
        capacity: int,
        streams: int = 2,
    ) -> None:
        in_flight = (4 * streams + 4) * block_size  # runs, demand reads, transport buffers
        if block_size <= 0 or capacity < in_flight + 4 * block_size:
            raise ValueError(f"a cache of {capacity} bytes is too small for {block_size} blocks")
        self.block_size = block_size
        self.capacity = capacity
        self.stats = CacheStats()
        self._nursery = nursery
        self._blocks = _Blocks(capacity - in_flight, self.stats, self._evicted)
        self._flights: dict[_Key, _Flight] = {}
        self._streams = trio.CapacityLimiter(streams)
        self._verifiers: dict[Digest, _Verifier] = {}
        self._hash_budget = ByteBudget()  # bytes landed, not hashed yet, of all blobs
        self._corrupt: cachetools.LRUCache[Digest, bool] = cachetools.LRUCache(maxsize=10_000)
        # Never look further ahead than a quarter of the cache or 64 MiB.
        self.max_window = max(1, min(capacity // 4, 64 << 20) // block_size)

    @property
    def used(self) -> int:
        """Bytes of blocks held."""
        return int(self._blocks.currsize)

    def holds(self, digest: Digest, index: int) -> bool:
        """Whether the block is in memory or on its way."""
        return self._covered(digest, index)

    def _covered(self, digest: Digest, index: int) -> bool:
        key = (digest, index)
        return key in self._blocks or key in self._flights

    def _land(self, key: _Key, flight: _Flight, data: Chunk) -> None:
        self.stats.fetched_bytes += len(data)
        self._blocks[key] = data
        flight.data = data
        del self._flights[key]
        flight.done.set()
        self._advance(key[0], key[1])

    def _fail(self, key: _Key, flight: _Flight, error: Exception | None) -> None:
        flight.error = error
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()
        verifier = self._verifiers.get(key[0])
        if verifier is not None and key[1] >= verifier.next:
            self._abandon(key[0], "a block failed to come")

    # -- verification -----------------------------------------------------------------------

    def _evicted(self, key: _Key) -> None:
        verifier = self._verifiers.get(key[0])
        if verifier is not None and key[1] >= verifier.next:
            self._abandon(key[0], f"block {key[1]} was evicted before it was hashed")

    def _verify_from_start(self, digest: Digest) -> None:
        """A reader starts at the blob's beginning: hash it as its blocks come, unless some
        of them are here or coming already (they may be gone before they could be hashed)."""
        last = (digest.size - 1) // self.block_size
        if (
            digest.size
            and digest.function.hashable
            and digest not in self._verifiers
            and not any(self._covered(digest, index) for index in range(last + 1))
        ):
            if len(self._verifiers) >= MAX_VERIFYING:  # readers that stopped halfway
                self._abandon(next(iter(self._verifiers)), "too many blobs being verified")
            self._verifiers[digest] = _Verifier(digest, self._nursery, self._hash_budget)

    def _advance(self, digest: Digest, landed: int) -> None:
        """Feed the verifier the blocks that follow on in the cache; conclude once the last
        is fed (the run that brings the last block concludes before landing it, in
        ``_land_last``; this is for a last block that came some other way)."""
        verifier = self._verifiers.get(digest)
        if verifier is None:
            return
        last = (digest.size - 1) // self.block_size
        while verifier.next <= last:
            key = (digest, verifier.next)
            data = self._blocks.get(key)
            if data is None:
                if landed > verifier.next and key not in self._flights:
                    # A later block came while this one is not coming: the reader got it
                    # some other way (the page cache, a direct read). Give up.
                    self._abandon(digest, f"block {verifier.next} went around the cache")
                return
            verifier.hasher.feed_nowait(data)
            verifier.next += 1
            verifier.wake()
        del self._verifiers[digest]
        self._nursery.start_soon(self._conclude_later, digest, verifier)

    async def _conclude_later(self, digest: Digest, verifier: _Verifier) -> None:
        try:
            await self._conclude(digest, verifier)
        except Exception:  # a bug here must not end the mount
            log.exception("verifying %s failed", digest)

    def _abandon(self, digest: Digest, why: str) -> None:
        verifier = self._verifiers.pop(digest, None)
        if verifier is not None:
            log.debug("%s: not verified: %s", digest, why)
            verifier.wake()

    async def _conclude(self, digest: Digest, verifier: _Verifier) -> bool:
        """Whether the blob hashed to its name (True if the hash was cut short by the
        mount ending). A mismatch marks it corrupt and drops its blocks."""
        got = await verifier.hasher.digest()
        if got is None or got == digest:
            return True
        log.error("%s: the server sent other content (%s): reads of it fail", digest, got)
        self._corrupt[digest] = True
        for key in [key for key in self._blocks if key[0] == digest]:
            del self._blocks[key]
        return False

    def _deliver(self, key: _Key, flight: _Flight, data: Chunk) -> None:
        """Land a run's block, but the blob's last one while the blob is being verified:
        that one waits for the verdict in a task of its own, outside the stream limiter
        (the runs that bring the blocks before it may still be waiting for a stream)."""
        digest, index = key
        verifier = self._verifiers.get(digest)
        if verifier is None or index != (digest.size - 1) // self.block_size:
            self._land(key, flight, data)
        else:
            self._nursery.start_soon(self._land_last, key, flight, data, verifier)

    async def _land_last(
        self, key: _Key, flight: _Flight, data: Chunk, verifier: _Verifier
    ) -> None:
        try:
            await self._verify_last(key, flight, data, verifier)
        except Exception as error:  # a bug here must not end the mount: the read fails
            log.exception("verifying %s failed", key[0])
            self._fail(key, flight, error)
        finally:
            if not flight.done.is_set():  # cancelled: the mount is ending
                self._fail(key, flight, None)

    async def _verify_last(
        self, key: _Key, flight: _Flight, data: Chunk, verifier: _Verifier
    ) -> None:
        digest, index = key
        while self._verifiers.get(digest) is verifier and verifier.next < index:
            if not all(self._covered(digest, i) for i in range(verifier.next, index)):
                self._abandon(digest, "a block before the last is not coming")
                break
            await verifier.moved.wait()
        if self._verifiers.get(digest) is verifier and verifier.next == index:
            del self._verifiers[digest]
            verifier.hasher.feed_nowait(data)
            if not await self._conclude(digest, verifier):
                self._fail(key, flight, DataLoss(f"{digest}: the content does not match"))
                return
        self._land(key, flight, data)

    def _check_not_corrupt(self, digest: Digest) -> None:
        if digest in self._corrupt:
            raise DataLoss(f"{digest}: the server sent content that does not match it")

    # -- demand reads -----------------------------------------------------------------------

    async def _fetch_block(self, source: BlobSource, key: _Key, flight: _Flight) -> None:
        digest, index = key
        try:
            data = await source.read_range(digest, index * self.block_size, self.block_size)
        except Exception as error:  # every waiter sees it; nothing is cached
            self._fail(key, flight, error)
        else:
            self._land(key, flight, data)
        finally:
            if not flight.done.is_set():  # cancelled: the mount is ending
                self._fail(key, flight, None)

    def _flight(self, source: BlobSource, digest: Digest, index: int) -> _Flight | None:
        """The flight for a block: a running one, a new one, or None if it is cached."""
        key = (digest, index)
        if key in self._blocks:
            return None
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            self._flights[key] = flight
            self.stats.misses += 1
            self._nursery.start_soon(self._fetch_block, source, key, flight)
        return flight

    def cached(self, digest: Digest, index: int) -> Chunk | None:
        """The block if it is in memory now (counted as a hit), else None; never fetches."""
        data = self._blocks.get((digest, index))
        if data is not None:
            self.stats.hits += 1
        return data

    async def block(self, source: BlobSource, digest: Digest, index: int) -> Chunk:
        """One block, from the cache or fetched (once, however many readers ask)."""
        data = self._blocks.get((digest, index))
        if data is not None:
            self.stats.hits += 1
            return data
        flight = self._flight(source, digest, index)
        if flight is None:  # pragma: no cover - the get above saw it missing
            return self._blocks[(digest, index)]
        self.stats.waits += 1
        return await flight.wait()

    async def read(self, source: BlobSource, digest: Digest, offset: int, size: int) -> Chunk:
        """Bytes ``[offset, offset + size)`` of the blob, clamped to its end."""
        end = min(offset + size, digest.size)
        if offset >= end:
            return b""
        size_ = self.block_size
        first, last = offset // size_, (end - 1) // size_
        if first == last:
            data = await self.block(source, digest, first)
            start = offset - first * size_
            if start == 0 and end - offset == len(data):
                return data
            return data[start : start + end - offset]
        for index in range(first, last + 1):  # start every fetch before waiting on any
            self._flight(source, digest, index)
        pieces = []
        for index in range(first, last + 1):
            data = await self.block(source, digest, index)
            start = max(offset, index * size_) - index * size_
            stop = min(end, (index + 1) * size_) - index * size_
            pieces.append(memoryview(data)[start:stop])
        return b"".join(pieces)

    # -- readahead ----------------------------------------------------------------------------

    def prefetch(self, source: BlobSource, digest: Digest, first: int, count: int) -> None:
        """Make sure blocks ``[first, first + count)`` are cached or coming (past the end of
        the blob: nothing). Starts one streaming run for the missing ones, unless more than
        half of them are already on their way."""
        last = min(first + count, (digest.size - 1) // self.block_size + 1)
        start = first
        while start < last and self._covered(digest, start):
            start += 1
        if start >= last or (start - first >= count // 2 and count > 1):
            return
        if start == 0:
            self._verify_from_start(digest)
        run: list[tuple[_Key, _Flight]] = []
        for index in range(start, last):
            if self._covered(digest, index):
                break
            key = (digest, index)
            flight = _Flight()
            self._flights[key] = flight
            run.append((key, flight))
        self.stats.prefetches += len(run)
        self.stats.runs += 1
        self._nursery.start_soon(self._run, source, digest, run)

    async def _run(
        self, source: BlobSource, digest: Digest, run: list[tuple[_Key, _Flight]]
    ) -> None:
        """Fetch a run of consecutive blocks with one streaming Read, landing each block as
        soon as it is complete."""
        first = run[0][0][1]
        offset = first * self.block_size
        length = len(run) * self.block_size
        pending = list(run)
        try:
            async with self._streams:
                stream = source.stream_range(digest, offset, length)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    buffer = bytearray()
                    async for chunk in stream:
                        if not buffer and len(chunk) == self.block_size:
                            key, flight = pending.pop(0)  # the common case: no copy
                            self._deliver(key, flight, chunk)
                        else:
                            buffer += chunk
                            while pending and len(buffer) >= self.block_size:
                                key, flight = pending.pop(0)
                                with memoryview(buffer) as view:
                                    block = bytes(view[: self.block_size])
                                del buffer[: self.block_size]
                                self._deliver(key, flight, block)
                        verifier = self._verifiers.get(digest)
                        if verifier is not None:  # hashing must keep up with the wire
                            await verifier.hasher.keep_up()
                    if pending and buffer:  # the blob's last, short block
                        key, flight = pending.pop(0)
                        self._deliver(key, flight, bytes(buffer))
        except Exception as error:
            log.debug("readahead of %s from block %d failed: %s", digest, first, error)
            for key, flight in pending:
                self._fail(key, flight, error)
            pending = []
        finally:
            for key, flight in pending:  # cancelled, or the stream came up short
                self._fail(key, flight, None)

    def _read_directly(self, digest: Digest, touched: range) -> None:
        """Bytes of these blocks go to the page cache without passing through the cache:
        a blob verified from its start can no longer count on seeing all of its blocks."""
        self.stats.direct_reads += 1
        verifier = self._verifiers.get(digest)
        if verifier is not None and any(
            index >= verifier.next and not self._covered(digest, index) for index in touched
        ):
            self._abandon(digest, "part of it was read around the cache")

    def _release(self, digest: Digest, touched: range, end: int) -> None:
        """Drop the blocks a sequential read has consumed up to their end.

        The kernel's page cache holds them now (blobs are opened with ``keep_cache``), so
        keeping them too would only double the memory. Dropping them at once lets the next
        blocks reuse their memory instead of faulting in fresh pages, which cost about a
        fifth of the mount's CPU on a cold read. A block that the read ends inside stays.
        """
        verifier = self._verifiers.get(digest)
        for index in touched:
            if verifier is not None and index >= verifier.next:
                continue  # not hashed yet: it stays until it is
            if min((index + 1) * self.block_size, digest.size) <= end:
                self._blocks.pop((digest, index), None)

    async def read_file(
        self, source: BlobSource, digest: Digest, offset: int, size: int, readahead: Readahead
    ) -> Chunk:
        """A read by an open file, whose pattern so far (``readahead``) decides the fetch.

        Sequential: whole blocks, and the blocks ahead as far as the window goes. Random:
        the cached blocks if they hold the range, else exactly the bytes asked for (a whole
        block would cost several times the request; the kernel's page cache keeps them).
        """
        self._check_not_corrupt(digest)
        window = readahead.advance(
            offset, size, max_window=self.max_window, slack=max(size, self.block_size)
        )
        end = min(offset + size, digest.size)
        if offset >= end:
            return b""
        touched = range(offset // self.block_size, (end - 1) // self.block_size + 1)
        # The last block of a blob being verified comes only through its flight, which
        # holds it back until the verdict.
        covered = all(self._covered(digest, i) for i in touched) or (
            digest in self._verifiers and end == digest.size
        )
        # A small read that reaches the blob's end (a small blob read whole) has nothing
        # ahead to prefetch: one fetch of its own bytes is all it needs.
        if window and (covered or end < digest.size or end - offset >= self.block_size):
            # The blocks this read needs and the window after them, in one run if missing.
            self.prefetch(source, digest, touched.start, len(touched) + window)
            if covered or end - offset >= self.block_size:
                data = await self.read(source, digest, offset, size)
                self._release(digest, touched, end)
                return data
            # A small first read (the kernel starts with 16 KiB) need not wait for a whole
            # block to stream in: its own bytes come sooner on their own.
        elif covered:
            return await self.read(source, digest, offset, size)
        self._read_directly(digest, touched)
        data = await source.read_range(digest, offset, end - offset)
        self.stats.fetched_bytes += len(data)
        return data
