"""The mount's counters in one place: ``FuseStats`` (what the FUSE adapter was asked and
answered) and ``Snapshot``, every figure of the mount read at one moment. ``casfs status``
(``fs/status.py``) and the Prometheus collector (``fs/metrics.py``) both read a
``Snapshot``; neither knows the FUSE adapter.

A snapshot is taken in the mount's trio thread, between two requests: it only reads
integers and copies small dictionaries, so every figure of one is from the same moment.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # ``casfs status`` reads snapshots' documents with none of these loaded
    from casfs.cas.remote import BlobRemote
    from casfs.fs.blocks.cache import BlockCache
    from casfs.fs.blocks.disk import DiskStats
    from casfs.fs.uploads import Uploads


@dataclass
class FuseStats:
    """What the mount was asked and what it answered (plain integers: the hot paths pay
    almost nothing)."""

    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, int]] = field(default_factory=Counter)  # (op, errno)
    read_bytes: int = 0
    written_bytes: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Every figure of a running mount at one moment."""

    remote: str
    instances: list[str]
    read_only: bool
    started: float  # seconds since the epoch
    # the block cache
    cache_capacity: int
    cache_used: int
    block_size: int
    hits: int
    waits: int
    misses: int
    direct_reads: int
    prefetches: int
    evictions: int
    fetched_bytes: int
    # uploads
    uploaded_bytes: int
    uploads_in_flight: int
    committed: int
    deduplicated: int
    failed: int
    recovered: int
    disk: DiskStats | None  # a copy of the disk tier's counters; None without one
    resumed: int
    # FUSE
    fuse_read_bytes: int
    fuse_written_bytes: int
    ops: dict[str, int]
    errors: dict[tuple[str, int], int]  # (op, errno)
    assets: dict[str, object] | None = None  # assets/: the API's state, fetches, pushes


class StatsSource(Protocol):
    """Whatever can take a snapshot of a mount's figures."""

    def snapshot(self) -> Snapshot: ...


class MountStats:
    """Takes snapshots of one mount's counters: its block cache, uploads, clients and
    FUSE adapter."""

    def __init__(
        self,
        *,
        remote: str,
        clients: Mapping[str, BlobRemote],
        cache: BlockCache,
        uploads: Uploads,
        read_only: bool,
        fuse: FuseStats,
    ) -> None:
        self.remote = remote
        self.assets: Callable[[], dict[str, object]] | None = None  # MountAssets.status
        self.started = time.time()
        self._clients = clients
        self._cache = cache
        self._uploads = uploads
        self._read_only = read_only
        self.fuse = fuse

    def snapshot(self) -> Snapshot:
        cache, uploads, fuse = self._cache, self._uploads, self.fuse
        blocks, done = cache.stats, uploads.stats
        return Snapshot(
            remote=self.remote,
            instances=list(self._clients),
            read_only=self._read_only,
            started=self.started,
            cache_capacity=cache.capacity,
            cache_used=cache.used,
            block_size=cache.block_size,
            hits=blocks.hits,
            waits=blocks.waits,
            misses=blocks.misses,
            direct_reads=blocks.direct_reads,
            prefetches=blocks.prefetches,
            evictions=blocks.evictions,
            fetched_bytes=blocks.fetched_bytes,
            uploaded_bytes=done.uploaded_bytes,
            uploads_in_flight=uploads.active,
            committed=done.committed,
            deduplicated=done.deduplicated,
            failed=done.failed,
            recovered=done.recovered,
            disk=replace(cache.disk.stats) if cache.disk is not None else None,
            resumed=sum(client.resumed_writes for client in self._clients.values()),
            fuse_read_bytes=fuse.read_bytes,
            fuse_written_bytes=fuse.written_bytes,
            ops=dict(fuse.ops.copy()),
            errors=dict(fuse.errors.copy()),
            assets=self.assets() if self.assets is not None else None,
        )
