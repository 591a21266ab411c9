"""The mount's Prometheus metrics: a snapshot of its counters (``fs/stats.py``) at scrape
time, the same one ``casfs status`` reads.

Runs in the mount's trio thread (``casfs.prometheus.serve_metrics_in_trio``), between two
requests, so every figure of one scrape is from the same moment; it only reads integers
and copies small dictionaries.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from casfs.fs.stats import StatsSource


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class MountCollector(Collector):
    """Block cache, CAS traffic, uploads and FUSE operations of one mount."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        stats = self._source.snapshot()
        yield _counter("casfs_cache_hits", "block lookups answered from memory", stats.hits)
        yield _counter(
            "casfs_cache_waits", "block lookups that waited for a fetch on its way", stats.waits
        )
        yield _counter("casfs_cache_misses", "blocks fetched on demand", stats.misses)
        yield _counter(
            "casfs_cache_prefetched_blocks", "blocks fetched by readahead", stats.prefetches
        )
        yield _counter(
            "casfs_cache_direct_reads",
            "random reads fetched outside the cache (no block covered them)",
            stats.direct_reads,
        )
        yield _counter("casfs_cache_evictions", "blocks evicted", stats.evictions)
        yield _gauge("casfs_cache_bytes", "bytes of blocks in the cache", stats.cache_used)
        yield _gauge(
            "casfs_cache_capacity_bytes", "the cache's configured size", stats.cache_capacity
        )
        if stats.disk is not None:
            yield from stats.disk.metrics()
        yield _counter(
            "casfs_cas_read_bytes", "blob bytes fetched from the CAS", stats.fetched_bytes
        )
        yield _counter(
            "casfs_cas_written_bytes", "blob bytes sent to the CAS", stats.uploaded_bytes
        )
        yield _counter(
            "casfs_fuse_read_bytes", "bytes read through the mount", stats.fuse_read_bytes
        )
        yield _counter(
            "casfs_fuse_written_bytes", "bytes written through the mount", stats.fuse_written_bytes
        )
        yield _gauge(
            "casfs_uploads_in_flight", "uploads being committed now", stats.uploads_in_flight
        )
        yield _counter(
            "casfs_uploads_committed",
            "files committed to the CAS (sent, or found there already)",
            stats.committed,
        )
        yield _counter(
            "casfs_uploads_deduplicated",
            "commits the server already had the blob for",
            stats.deduplicated,
        )
        yield _counter(
            "casfs_uploads_failed", "commits that failed (the file stays spooled)",
            stats.failed,
        )  # fmt: skip
        yield _counter(
            "casfs_uploads_recovered",
            "uploads left by an earlier mount, taken up again",
            stats.recovered,
        )
        yield _counter(
            "casfs_uploads_resumed",
            "ByteStream writes resumed at the server's committed size after a failure",
            stats.resumed,
        )
        ops = CounterMetricFamily("casfs_fuse_ops", "FUSE requests by type", labels=["op"])
        for op, count in sorted(stats.ops.items()):
            ops.add_metric([op], count)
        yield ops
        errors = CounterMetricFamily(
            "casfs_fuse_errors",
            "FUSE requests answered with an error, by type and errno",
            labels=["op", "errno"],
        )
        for (op, code), count in sorted(stats.errors.items()):
            errors.add_metric([op, errno.errorcode.get(code, str(code))], count)
        yield errors
