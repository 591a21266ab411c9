"""The mount's status document and its Prometheus metrics are two views of one snapshot of
its counters, and the catalog's existence answers: no mount, no server."""

from __future__ import annotations

import errno
from collections.abc import Iterable

import trio
from prometheus_client import CollectorRegistry, generate_latest

from casfs.digest import Digest, DigestFunction
from casfs.fs.catalog import Catalog
from casfs.fs.metrics import MountCollector
from casfs.fs.stats import Snapshot
from casfs.fs.status import document

SNAPSHOT = Snapshot(
    remote="grpc://cas:1",
    instances=["main"],
    read_only=False,
    started=0.0,
    cache_capacity=1000,
    cache_used=250,
    block_size=100,
    hits=3,
    waits=1,
    misses=2,
    direct_reads=4,
    prefetches=5,
    evictions=6,
    fetched_bytes=700,
    uploaded_bytes=800,
    uploads_in_flight=1,
    committed=9,
    deduplicated=2,
    failed=1,
    recovered=0,
    disk=None,
    resumed=3,
    fuse_read_bytes=11,
    fuse_written_bytes=12,
    ops={"read": 7, "lookup": 4},
    errors={("lookup", errno.ENOENT): 2, ("read", errno.EIO): 1},
)


class Fixed:
    def snapshot(self) -> Snapshot:
        return SNAPSHOT


def test_status_and_metrics_show_the_same_snapshot() -> None:
    status = document(SNAPSHOT)
    assert status["cache"]["hit_rate"] == round(3 / 8, 4)
    assert status["fuse"]["ops"] == {"lookup": 4, "read": 7}
    assert status["errors"] == {"EIO": 1}  # a lookup of a missing name is no error
    assert status["uploads"]["resumed"] == 3

    registry = CollectorRegistry()
    registry.register(MountCollector(Fixed()))
    text = generate_latest(registry).decode()
    assert "casfs_cache_hits_total 3.0" in text
    assert "casfs_uploads_resumed_total 3.0" in text
    assert 'casfs_fuse_errors_total{errno="ENOENT",op="lookup"} 2.0' in text
    assert "casfs_fuse_read_bytes_total 11.0" in text


def test_catalog_asks_once_and_remembers_what_it_saw() -> None:
    asked: list[list[Digest]] = []
    present = Digest.of_bytes(b"present")
    absent = Digest.of_bytes(b"absent")

    async def find_missing(digests: Iterable[Digest]) -> set[Digest]:
        wanted = list(digests)
        asked.append(wanted)
        return {d for d in wanted if d == absent}

    async def main() -> None:
        catalog = Catalog()
        assert await catalog.exists("main", present, find_missing)
        assert await catalog.exists("main", present, find_missing)
        assert not await catalog.exists("main", absent, find_missing)
        assert not await catalog.exists("main", absent, find_missing)
        assert asked == [[present], [absent]]  # each asked once within its TTL
        assert catalog.hashes("main", None) == [present.hash]
        assert catalog.sizes("main", DigestFunction.SHA256, present.hash) == [present.size]
        # Once a read reached its last byte, a hash has one size: others are not asked.
        catalog.verify("main", present)
        other = Digest(present.hash, present.size + 1)
        assert not await catalog.exists("main", other, find_missing)
        assert len(asked) == 2
        catalog.found("main", absent)  # uploaded by this mount
        assert await catalog.exists("main", absent, find_missing)
        assert await catalog.exists("main", Digest.of_bytes(b""), find_missing)  # empty
        assert len(asked) == 2

    trio.run(main)
