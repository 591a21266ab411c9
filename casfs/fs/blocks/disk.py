"""The disk tier under the block cache: blocks looked for on disk before the remote, and
blocks fetched from the remote written to disk behind the read.

- ``load``/``load_run``: a block (or a run of consecutive ones) from disk, or None/short;
  ``load_in_order``: a readahead run's blocks handed on in order as they load, the loads
  several thread calls ahead.
  A file that fails its check (``diskstore``) is deleted and counted, and the block is a
  miss, fetched from the remote as if it had never been there.
- ``keep``: queue a block the remote sent for writing; never waits. Pending writes hold at
  most ``budget`` bytes; a block that does not fit is not written (counted as skipped):
  the reader is never slowed down by the disk.
- ``drop``: a blob found corrupt leaves the disk too, and is not written again by this
  mount.

Trust: a block on disk is what the remote sent for it, checked against its own CRC on
every read. It gets exactly the trust of a block just received: a blob read from its
start is hashed whole (``verify``) whether its blocks came from disk or the wire, and a
mismatch drops its blocks from memory and from disk. Blocks are written as they arrive,
before their blob's verdict (holding them back would cost memory for the whole blob); a
corrupt blob's blocks may so sit on disk until its verdict deletes them, and a random
reader (never verified, from the wire either) may read them meanwhile.

The disk failing (full, read-only, permissions) never fails a read: it is logged once and
the block comes from the remote.

Concurrency notes: every method runs in the mount's trio thread; file work runs in worker
threads (``trio.to_thread``), handed only paths and bytes. Loads run at most ``LOADERS``
at a time. One writer task owns the queue's draining: it takes the queued blocks, writes
them in one thread call, and evicts (in the same thread) when the root is over its
limit. ``keep`` and ``drop`` only touch the queue, between the writer's checkpoints, so
a dropped blob's queued blocks never reach the disk; one already in the writer's batch
may, and ``drop`` deletes the blob's files after that batch (the deletions run in the
writer task, in order). Another mount sharing the root only ever sees whole files
(renames), and a file it deletes under us is a miss.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import trio

from casfs.cas.client import Chunk
from casfs.digest import Digest
from casfs.fs.blocks.diskstore import Area, CorruptBlock, DiskStore

log = logging.getLogger("casfs.fs")
LOADERS = 4  # disk reads at once
RUN = 4  # blocks read from disk in one worker-thread call
BUDGET = 32 << 20  # bytes of blocks waiting to be written


@dataclass
class DiskStats:
    """The disk tier's counters; ``status()`` is what ``casfs status`` and the metrics show."""

    limit: int = 0
    used: int = 0  # bytes on disk, as of the last scan plus this mount's writes
    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # files that failed their check (deleted, refetched)
    written_blocks: int = 0
    written_bytes: int = 0
    skipped_writes: int = 0  # blocks not written: the queue was full
    evictions: int = 0
    errors: int = 0  # disk errors (logged once)

    def status(self) -> dict[str, int]:
        return {
            "capacity_bytes": self.limit,
            "used_bytes": self.used,
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "written_blocks": self.written_blocks,
            "written_bytes": self.written_bytes,
            "skipped_writes": self.skipped_writes,
            "evictions": self.evictions,
            "errors": self.errors,
        }

    def metrics(self) -> Iterable[Any]:
        """Prometheus metric families (``casfs_disk_cache_*``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "casfs_disk_cache_bytes", "bytes of blocks in the disk cache", value=self.used
        )
        yield GaugeMetricFamily(
            "casfs_disk_cache_capacity_bytes", "the disk cache's size limit", value=self.limit
        )
        counters = (
            ("hits", "blocks read from the disk cache", self.hits),
            ("misses", "blocks looked for on disk and not there", self.misses),
            ("corrupt", "disk cache files that failed their check", self.corrupt),
            ("written_bytes", "bytes written to the disk cache", self.written_bytes),
            ("skipped_writes", "blocks not written: the write queue was full", self.skipped_writes),
            ("evictions", "disk cache files evicted", self.evictions),
            ("errors", "disk cache I/O errors", self.errors),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"casfs_disk_cache_{name}", documentation, value=value)


class DiskTier:
    """Blocks on disk for the block cache; see the module notes."""

    def __init__(self, store: DiskStore, nursery: trio.Nursery, budget: int = BUDGET) -> None:
        self.store = store
        self.stats = DiskStats(limit=store.limit)
        self._nursery = nursery
        self._budget = budget
        self._areas: dict[int, tuple[object, Area]] = {}
        self._loaders = trio.CapacityLimiter(LOADERS)
        self._queue: collections.deque[tuple[Area, Digest, int, Chunk]] = collections.deque()
        self._drops: list[Digest] = []
        self._queued = 0
        self._wake = trio.Event()
        self._refused: cachetools.LRUCache[Digest, bool] = cachetools.LRUCache(maxsize=10_000)
        self._warned = False

    def start(self) -> None:
        """Start the writer, once the store is open."""
        self.stats.used = self.store.total
        self._nursery.start_soon(self._writer)

    def attach(self, source: object, area: Area) -> None:
        """Blocks of ``source`` (a client of one instance) live in ``area``."""
        self._areas[id(source)] = (source, area)

    def _area(self, source: object) -> Area | None:
        found = self._areas.get(id(source))
        return found[1] if found is not None and found[0] is source else None

    def _failed(self, what: str, error: OSError) -> None:
        self.stats.errors += 1
        if not self._warned:
            self._warned = True
            log.warning("disk cache %s: %s failed: %s (reads go on)", self.store.root, what, error)

    # -- reads --------------------------------------------------------------------------------

    async def load(self, source: object, digest: Digest, index: int) -> Chunk | None:
        """The block from disk, or None (not there, torn, or the disk failing)."""
        found = await self.load_run(source, digest, (index,))
        return found[0] if found else None

    async def load_run(self, source: object, digest: Digest, indexes: Sequence[int]) -> list[Chunk]:
        """The blocks from disk, in order, up to the first one missing (``RUN`` per thread
        call). Cancelled, the thread call finishes alone and its blocks are dropped."""
        area = self._area(source)
        if area is None or digest in self._refused:
            return []
        found: list[Chunk] = []
        for start in range(0, len(indexes), RUN):
            batch = indexes[start : start + RUN]
            async with self._loaders:
                got, corrupt, error = await trio.to_thread.run_sync(
                    self._load_batch, area, digest, batch, abandon_on_cancel=True
                )
            self.stats.hits += len(got)
            self.stats.corrupt += corrupt
            if error is not None:
                self._failed("a read", error)
            found += got
            if len(got) < len(batch):
                self.stats.misses += 1
                break
        return found

    async def load_in_order(
        self,
        source: object,
        digest: Digest,
        indexes: Sequence[int],
        land: Callable[[list[Chunk]], Awaitable[None]],
    ) -> int:
        """Hand the blocks from disk to ``land``, in order, up to the first one missing;
        returns how many were handed. Up to ``LOADERS`` thread calls of ``RUN`` blocks
        load ahead of the one being handed, so the disk's latency overlaps the reader's
        and the hash's work (one call at a time left a cold disk idle between calls).

        Cancelled, or when ``land`` raises, the loads under way are abandoned (their
        threads finish alone) and their blocks dropped.
        """
        area = self._area(source)
        if area is None or digest in self._refused:
            return 0
        batches = [indexes[start : start + RUN] for start in range(0, len(indexes), RUN)]
        loaded: list[tuple[list[Chunk], int, OSError | None] | None] = [None] * len(batches)
        done = [trio.Event() for _ in batches]
        ahead = trio.Semaphore(LOADERS)
        handed = 0

        async def load(number: int) -> None:
            try:
                async with self._loaders:
                    loaded[number] = await trio.to_thread.run_sync(
                        self._load_batch, area, digest, batches[number], abandon_on_cancel=True
                    )
            finally:
                done[number].set()

        async def start_loads(nursery: trio.Nursery) -> None:
            for number in range(len(batches)):
                await ahead.acquire()
                nursery.start_soon(load, number)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_loads, nursery)
            for number, batch in enumerate(batches):
                await done[number].wait()
                ahead.release()
                result = loaded[number]
                if result is None:  # its load raised: the nursery has it
                    break
                got, corrupt, error = result
                self.stats.hits += len(got)
                self.stats.corrupt += corrupt
                if error is not None:
                    self._failed("a read", error)
                if got:
                    await land(got)
                    handed += len(got)
                if len(got) < len(batch):
                    self.stats.misses += 1
                    break
            nursery.cancel_scope.cancel()
        return handed

    async def absent(self, source: object, digest: Digest, indexes: Sequence[int]) -> int:
        """How many of the blocks, from the first, have no file on disk (a run streams
        those, and looks on disk again after them)."""
        area = self._area(source)
        if area is None:
            return len(indexes)

        def count() -> int:
            for done, index in enumerate(indexes):
                if area.file(digest, index).exists():
                    return done
            return len(indexes)

        async with self._loaders:
            return await trio.to_thread.run_sync(count, abandon_on_cancel=True)

    def _load_batch(
        self, area: Area, digest: Digest, indexes: Sequence[int]
    ) -> tuple[list[Chunk], int, OSError | None]:
        """(worker thread) Blocks up to the first missing, files that failed, an error."""
        got: list[Chunk] = []
        corrupt = 0
        if len(indexes) > 1:
            self.store.will_need(area, digest, indexes[1:])
        for index in indexes:
            try:
                data = self.store.load(area, digest, index)
            except CorruptBlock as why:
                log.warning("disk cache: %s", why)
                return got, corrupt + 1, None
            except OSError as error:
                return got, corrupt, error
            if data is None:
                break
            got.append(data)
        return got, corrupt, None

    # -- writes -------------------------------------------------------------------------------

    def keep(self, source: object, digest: Digest, index: int, data: Chunk) -> None:
        """Queue a block the remote sent for writing; never waits (see the module notes)."""
        area = self._area(source)
        if area is None or digest in self._refused:
            return
        if self._queued + len(data) > self._budget:
            self.stats.skipped_writes += 1
            return
        self._queue.append((area, digest, index, data))
        self._queued += len(data)
        self._wake.set()

    def drop(self, digest: Digest) -> None:
        """Forget a blob found corrupt: its queued writes, and (by the writer) its files."""
        self._refused[digest] = True
        kept = [item for item in self._queue if item[1] != digest]
        self._queued -= sum(len(item[3]) for item in self._queue if item[1] == digest)
        self._queue = collections.deque(kept)
        self._drops.append(digest)
        self._wake.set()

    async def _writer(self) -> None:
        """Drain the queue in worker threads until the mount ends (cancelled: what is
        queued is not written; a thread call under way finishes)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue or self._drops:
                batch: list[tuple[Area, Digest, int, Chunk]] = []
                size = 0
                while self._queue and size < 8 << 20:
                    item = self._queue.popleft()
                    batch.append(item)
                    size += len(item[3])
                drops, self._drops = self._drops, []
                areas = [area for _, area in self._areas.values()]
                try:
                    written, evicted = await trio.to_thread.run_sync(
                        self._write_batch, batch, drops, areas
                    )
                except OSError as error:
                    self._failed("a write", error)
                    written, evicted = [], 0
                except Exception:  # a bug here must not end the mount: the blocks are lost
                    log.exception("disk cache: writing %d block(s) failed", len(batch))
                    written, evicted = [], 0
                finally:
                    self._queued -= size
                self.stats.written_blocks += len(written)
                self.stats.written_bytes += sum(written)
                self.stats.evictions += evicted
                self.stats.used = self.store.total

    def _write_batch(
        self,
        batch: list[tuple[Area, Digest, int, Chunk]],
        drops: list[Digest],
        areas: list[Area],
    ) -> tuple[list[int], int]:
        """(worker thread) Write, delete dropped blobs, evict if over the limit."""
        written = []
        for area, digest, index, data in batch:
            added = self.store.save(area, digest, index, data)
            if added:
                written.append(added)
        for digest in drops:
            for area in areas:
                self.store.drop(area, digest)
        evicted = self.store.evict() if self.store.over() else 0
        return written, evicted


async def open_disk_tier(
    root: Path,
    limit: int,
    nursery: trio.Nursery,
    endpoint: str,
    clients: Mapping[str, object],
    block_size: int,
) -> DiskTier | None:
    """The disk tier of a mount: ``clients`` by instance name, each given the area of
    ``endpoint`` and that instance. A root that cannot be made (permissions, a read-only
    file system) is logged and means no disk tier: the mount goes on without it."""
    store = DiskStore(root, limit)
    tier = DiskTier(store, nursery)

    def areas() -> list[tuple[object, Area]]:
        store.open()
        return [
            (client, store.area(endpoint, name, block_size)) for name, client in clients.items()
        ]

    try:
        found = await trio.to_thread.run_sync(areas)
    except OSError as error:
        log.warning("no disk cache: %s: %s", root, error)
        return None
    for client, area in found:
        tier.attach(client, area)
    tier.start()
    log.info("disk cache: %s (%d of %d bytes used)", root, store.total, limit)
    return tier
