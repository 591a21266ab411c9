"""Prometheus metrics over HTTP: ``--metrics [HOST:]PORT`` on ``casfs mount`` and ``serve``.

The counters are plain integers kept by the objects that own them (the block cache, the
uploads, the FUSE operations, ``RpcStats``); collectors read them only when Prometheus
scrapes, so the hot paths pay for no metric objects, labels or locks. The endpoint is
prometheus_client's small threaded HTTP server, in a daemon thread, serving ``/metrics``.
It listens on 127.0.0.1 unless the address names another host: the numbers say what is
being read and written, which is nobody else's business by default.

Failure: an address that cannot be bound raises ``MetricsError`` before anything else
starts, so a mount or server is never left half up. A collector that fails makes that
scrape fail (an HTTP 500), never the mount.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from casfs.config import ConfigError
from casfs.rpcstats import LATENCY_BUCKETS, RpcStats, split_method

log = logging.getLogger("casfs")
DEFAULT_HOST = "127.0.0.1"


class MetricsError(OSError):
    """The metrics endpoint cannot listen where it was asked to."""


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` as ``(host, port)``; the host defaults to
    127.0.0.1, and port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip().removeprefix("[").removesuffix("]") if sep else ""
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics needs [HOST:]PORT, like 127.0.0.1:9100, not {text!r}")
    return host or DEFAULT_HOST, int(port)


@contextlib.contextmanager
def serve_metrics(address: str, *collectors: Collector) -> Iterator[str]:
    """Serve ``collectors`` (and the process's CPU, memory and GC figures) on ``address``
    until the block ends; yields the URL, which is also logged."""
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except OSError as error:
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/metrics"
    log.info("metrics on %s", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class RpcCollector(Collector):
    """``casfs_grpc_<side>_handled_total`` and ``casfs_grpc_<side>_handling_seconds`` by
    service, method and status code, from an ``RpcStats``."""

    def __init__(self, stats: RpcStats, side: str) -> None:
        self._stats = stats
        self._side = side

    def collect(self) -> Iterable[Metric]:
        labels = ["grpc_service", "grpc_method", "grpc_code"]
        handled = CounterMetricFamily(
            f"casfs_grpc_{self._side}_handled",
            f"gRPC calls {'made' if self._side == 'client' else 'served'}, by status code",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            f"casfs_grpc_{self._side}_handling_seconds",
            "gRPC call duration, start to status (streams: to their end)",
            labels=labels,
        )
        bounds = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        for (method, code), calls in sorted(self._stats.snapshot().items()):
            values = [*split_method(method), code]
            handled.add_metric(values, calls.count)
            cumulative, total = [], 0
            for bound, count in zip(bounds, calls.buckets, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric(values, cumulative, calls.seconds)
        yield handled
        yield latency
