"""The mount's Prometheus metrics, read from its objects' own counters at scrape time.

Runs in the mount's trio thread (``casfs.metrics.serve_metrics_in_trio``), between two
requests, so every figure of one scrape is from the same moment; it only reads integers
and copies small dictionaries.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from casfs.fs.operations import CasOperations


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class MountCollector(Collector):
    """Block cache, CAS traffic, uploads and FUSE operations of one mount."""

    def __init__(self, operations: CasOperations) -> None:
        self._operations = operations

    def collect(self) -> Iterable[Metric]:
        operations = self._operations
        cache = operations.cache.stats
        uploads = operations.uploads
        fuse = operations.stats
        yield _counter("casfs_cache_hits", "block lookups answered from memory", cache.hits)
        yield _counter(
            "casfs_cache_waits", "block lookups that waited for a fetch on its way", cache.waits
        )
        yield _counter("casfs_cache_misses", "blocks fetched on demand", cache.misses)
        yield _counter(
            "casfs_cache_prefetched_blocks", "blocks fetched by readahead", cache.prefetches
        )
        yield _counter(
            "casfs_cache_direct_reads",
            "random reads fetched outside the cache (no block covered them)",
            cache.direct_reads,
        )
        yield _counter("casfs_cache_evictions", "blocks evicted", cache.evictions)
        yield _gauge("casfs_cache_bytes", "bytes of blocks in the cache", operations.cache.used)
        yield _gauge(
            "casfs_cache_capacity_bytes", "the cache's configured size", operations.cache.capacity
        )
        if operations.cache.disk is not None:
            yield from operations.cache.disk.stats.metrics()
        yield _counter(
            "casfs_cas_read_bytes", "blob bytes fetched from the CAS", cache.fetched_bytes
        )
        yield _counter(
            "casfs_cas_written_bytes", "blob bytes sent to the CAS", uploads.stats.uploaded_bytes
        )
        yield _counter("casfs_fuse_read_bytes", "bytes read through the mount", fuse.read_bytes)
        yield _counter(
            "casfs_fuse_written_bytes", "bytes written through the mount", fuse.written_bytes
        )
        yield _gauge("casfs_uploads_in_flight", "uploads being committed now", uploads.active)
        yield _counter(
            "casfs_uploads_committed",
            "files committed to the CAS (sent, or found there already)",
            uploads.stats.committed,
        )
        yield _counter(
            "casfs_uploads_deduplicated",
            "commits the server already had the blob for",
            uploads.stats.deduplicated,
        )
        yield _counter(
            "casfs_uploads_failed", "commits that failed (the file stays spooled)",
            uploads.stats.failed,
        )  # fmt: skip
        yield _counter(
            "casfs_uploads_recovered",
            "uploads left by an earlier mount, taken up again",
            uploads.stats.recovered,
        )
        yield _counter(
            "casfs_uploads_resumed",
            "ByteStream writes resumed at the server's committed size after a failure",
            sum(client.resumed_writes for client in operations.clients.values()),
        )
        ops = CounterMetricFamily("casfs_fuse_ops", "FUSE requests by type", labels=["op"])
        for op, count in sorted(fuse.ops.copy().items()):
            ops.add_metric([op], count)
        yield ops
        errors = CounterMetricFamily(
            "casfs_fuse_errors",
            "FUSE requests answered with an error, by type and errno",
            labels=["op", "errno"],
        )
        for (op, code), count in sorted(fuse.errors.copy().items()):
            errors.add_metric([op, errno.errorcode.get(code, str(code))], count)
        yield errors
