"""``BlockCache``: blocks of blobs in memory, fetched once, and the policy of a file's read.

Blobs are content-addressed, so a block is the same whichever instance (and so whichever
source) it came from.

- A block is fetched at most once at a time (``flight``): the first reader starts the
  fetch in the cache's own nursery and every reader of that block waits on it.
- A random read (the file's readahead window is closed) that no cached block covers
  fetches just its own range, outside the cache and without a flight: its bytes go to
  the kernel's page cache.
- A block that a sequential reader has read to its end leaves the cache at once: the
  kernel's page cache has it (``keep_cache``), and its memory goes to the next block.
- Memory is bounded by ``capacity``: the LRU gets the capacity less what runs in flight
  may hold (one block being assembled per run, plus demand fetches).

Concurrency notes: all methods run in the mount's one trio thread. A flight is in
``_flights`` from its start until it lands or fails, so ``covered`` never misses a block
on its way; across any checkpoint a block may land, be evicted, or its flight fail.
"""

from __future__ import annotations

import trio

from casfs.cas.client import Chunk
from casfs.digest import Digest
from casfs.fs.blocks.disk import DiskTier
from casfs.fs.blocks.flight import Flight
from casfs.fs.blocks.lru import BlockKey, BlockLRU, CacheStats
from casfs.fs.blocks.readahead import BlobSource, Prefetcher, Readahead
from casfs.fs.blocks.verify import Verification


class BlockCache:
    """Blocks of blobs in memory; see the module notes."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        block_size: int,
        capacity: int,
        streams: int = 2,
        disk: DiskTier | None = None,
    ) -> None:
        in_flight = (4 * streams + 4) * block_size  # runs, demand reads, transport buffers
        if block_size <= 0 or capacity < in_flight + 4 * block_size:
            raise ValueError(f"a cache of {capacity} bytes is too small for {block_size} blocks")
        self.block_size = block_size
        self.capacity = capacity
        self.stats = CacheStats()
        self.disk = disk
        self._nursery = nursery
        self.verification = Verification(self, nursery)
        self.blocks = BlockLRU(capacity - in_flight, self.stats, self.verification.evicted)
        self._flights: dict[BlockKey, Flight] = {}
        self._prefetcher = Prefetcher(self, self.verification, self.stats, nursery, streams, disk)
        # Never look further ahead than a quarter of the cache or 64 MiB.
        self.max_window = max(1, min(capacity // 4, 64 << 20) // block_size)

    @property
    def used(self) -> int:
        """Bytes of blocks held."""
        return int(self.blocks.currsize)

    # -- what verification and runs need (see their Protocols) -------------------------------

    def covered(self, digest: Digest, index: int) -> bool:
        """Whether the block is in memory or on its way."""
        key = (digest, index)
        return key in self.blocks or key in self._flights

    def held(self, key: BlockKey) -> Chunk | None:
        return self.blocks.get(key)

    def in_flight(self, key: BlockKey) -> bool:
        return key in self._flights

    def new_flight(self, key: BlockKey) -> Flight:
        flight = self._flights[key] = Flight()
        return flight

    def land(self, key: BlockKey, flight: Flight, data: Chunk) -> None:
        self.blocks[key] = data
        flight.data = data
        del self._flights[key]
        flight.done.set()
        self.verification.landed(key[0], key[1])

    def fail(self, key: BlockKey, flight: Flight, error: Exception | None) -> None:
        flight.error = error
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()
        self.verification.failed(key)

    def offer(self, source: BlobSource, digest: Digest, index: int, data: Chunk) -> None:
        """A whole block that streamed past a read (a source that reads blobs from their
        start, ``cas/tvixremote.py``): kept as a fetched one is, in memory and on disk,
        unless it is here or on its way already."""
        key = (digest, index)
        if key in self.blocks or key in self._flights:
            return
        self.blocks[key] = data
        self.stats.fetched_bytes += len(data)
        if self.disk is not None:
            self.disk.keep(source, digest, index, data)
        self.verification.landed(digest, index)

    def drop(self, digest: Digest) -> None:
        """Forget every cached block of a blob, in memory and on disk."""
        for key in [key for key in self.blocks if key[0] == digest]:
            del self.blocks[key]
        if self.disk is not None:
            self.disk.drop(digest)

    # -- demand reads -----------------------------------------------------------------------

    async def _fetch_block(self, source: BlobSource, key: BlockKey, flight: Flight) -> None:
        digest, index = key
        try:
            data = await self.disk.load(source, digest, index) if self.disk else None
            if data is None:
                data = await source.read_range(digest, index * self.block_size, self.block_size)
                self.stats.fetched_bytes += len(data)
                if self.disk is not None:
                    self.disk.keep(source, digest, index, data)
        except Exception as error:  # every waiter sees it; nothing is cached
            self.fail(key, flight, error)
        else:
            self.land(key, flight, data)
        finally:
            if not flight.done.is_set():  # cancelled: the mount is ending
                self.fail(key, flight, None)

    def _flight(self, source: BlobSource, digest: Digest, index: int) -> Flight | None:
        """The flight for a block: a running one, a new one, or None if it is cached."""
        key = (digest, index)
        if key in self.blocks:
            return None
        flight = self._flights.get(key)
        if flight is None:
            flight = self.new_flight(key)
            self.stats.misses += 1
            self._nursery.start_soon(self._fetch_block, source, key, flight)
        return flight

    def cached(self, digest: Digest, index: int) -> Chunk | None:
        """The block if it is in memory now (counted as a hit), else None; never fetches."""
        data = self.blocks.get((digest, index))
        if data is not None:
            self.stats.hits += 1
        return data

    async def block(self, source: BlobSource, digest: Digest, index: int) -> Chunk:
        """One block, from the cache or fetched (once, however many readers ask)."""
        data = self.blocks.get((digest, index))
        if data is not None:
            self.stats.hits += 1
            return data
        flight = self._flight(source, digest, index)
        if flight is None:  # pragma: no cover - the get above saw it missing
            return self.blocks[(digest, index)]
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

    # -- reads by open files ----------------------------------------------------------------

    def prefetch(self, source: BlobSource, digest: Digest, first: int, count: int) -> None:
        """Make sure blocks ``[first, first + count)`` are cached or coming."""
        self._prefetcher.prefetch(source, digest, first, count)

    def _release(self, digest: Digest, touched: range, end: int) -> None:
        """Drop the blocks a sequential read has consumed up to their end.

        The kernel's page cache holds them now (blobs are opened with ``keep_cache``), so
        keeping them too would only double the memory, and the next blocks reuse their
        memory instead of faulting in fresh pages. A block that the read ends inside stays,
        and so does one that verification has not hashed yet.
        """
        for index in touched:
            if self.verification.unhashed(digest, index):
                continue
            if min((index + 1) * self.block_size, digest.size) <= end:
                self.blocks.pop((digest, index), None)

    async def read_file(
        self, source: BlobSource, digest: Digest, offset: int, size: int, readahead: Readahead
    ) -> Chunk:
        """A read by an open file, whose pattern so far (``readahead``) decides the fetch.

        Sequential: whole blocks, and the blocks ahead as far as the window goes. Random:
        the cached blocks if they hold the range, else exactly the bytes asked for (a whole
        block would cost several times the request; the kernel's page cache keeps them),
        but from a source that is not ``ranged`` for the blob, whole blocks in one run.
        """
        self.verification.check(digest)
        window = readahead.advance(
            offset, size, max_window=self.max_window, slack=max(size, self.block_size)
        )
        end = min(offset + size, digest.size)
        if offset >= end:
            return b""
        touched = range(offset // self.block_size, (end - 1) // self.block_size + 1)
        # The last block of a blob being verified comes only through its flight, which
        # holds it back until the verdict.
        covered = all(self.covered(digest, i) for i in touched) or (
            self.verification.verifying(digest) and end == digest.size
        )
        # A small read that reaches the blob's end (a small blob read whole) has nothing
        # ahead to prefetch: one fetch of its own bytes is all it needs.
        ranged = source.ranged(digest)
        if window and (covered or end < digest.size or end - offset >= self.block_size):
            # The blocks this read needs and the window after them, in one run if missing.
            self.prefetch(source, digest, touched.start, len(touched) + window)
            if covered or end - offset >= self.block_size or not ranged:
                data = await self.read(source, digest, offset, size)
                if ranged:  # else a reader behind would cost a stream from the start
                    self._release(digest, touched, end)
                return data
            # A small first read (the kernel starts with 16 KiB) need not wait for a whole
            # block to stream in: its own bytes come sooner on their own.
        elif covered:
            return await self.read(source, digest, offset, size)
        elif not ranged:  # its own bytes would cost a stream from the start: blocks
            self.prefetch(source, digest, touched.start, len(touched))
            return await self.read(source, digest, offset, size)
        self.verification.read_around(digest, touched)
        if self.disk is not None:  # blocks all on disk need no call
            blocks = await self.disk.load_run(source, digest, touched)
            if len(blocks) == len(touched):
                return _cut(blocks, touched.start * self.block_size, offset, end)
        self.stats.direct_reads += 1
        data = await source.read_range(digest, offset, end - offset)
        self.stats.fetched_bytes += len(data)
        return data


def _cut(blocks: list[Chunk], base: int, offset: int, end: int) -> Chunk:
    """Bytes ``[offset, end)`` of consecutive blocks that start at byte ``base``."""
    if len(blocks) == 1:
        return memoryview(blocks[0])[offset - base : end - base]
    return b"".join(blocks)[offset - base : end - base]
