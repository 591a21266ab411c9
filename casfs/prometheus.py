"""Prometheus metrics over HTTP: ``--metrics [HOST:]PORT`` on ``casfs mount`` and ``serve``.

The counters are plain integers kept by the objects that own them (the block cache, the
uploads, the FUSE operations, ``RpcStats``); collectors read them only when Prometheus
scrapes, so the hot paths pay for no metric objects, labels or locks. The endpoint listens
on 127.0.0.1 unless the address names another host: the numbers say what is being read
and written, which is nobody else's business by default.

Two ways to serve it. ``casfs serve`` (a threaded grpc server) uses prometheus_client's
HTTP server in a daemon thread (``serve_metrics``). The mount answers scrapes in its own
trio loop (``serve_metrics_in_trio``), with no thread of its own: the mount is CPU-bound
in one thread, and measured with an extra thread it used about a tenth more CPU per byte
read; in the loop a scrape costs one short task, and the collectors read counters from
the thread that changes them.

Failure: an address that cannot be bound raises ``MetricsError`` before anything else
starts, so a mount or server is never left half up. A collector that fails makes that
scrape fail (an HTTP 500, logged), never the mount or the server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
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


def _registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """``collectors`` and the process's CPU, memory and GC figures."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _url(host: str, port: int) -> str:
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    log.info("metrics on %s", url)
    return url


def _cannot(host: str, port: int, error: OSError) -> MetricsError:
    return MetricsError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}")


@contextlib.contextmanager
def serve_metrics(address: str, *collectors: Collector) -> Iterator[str]:
    """Serve ``collectors`` on ``address`` from a thread until the block ends; yields the
    URL, which is also logged."""
    host, port = parse_address(address)
    registry = _registry(collectors)
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except OSError as error:
        raise _cannot(host, port, error) from None
    try:
        yield _url(host, server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def serve_metrics_in_trio(
    address: str,
    *collectors: Collector,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``collectors`` on ``address`` from the calling trio loop until cancelled.

    For ``nursery.start``: it binds first (``MetricsError`` if it cannot), then reports
    the URL (also logged). Each connection gets one answer (HTTP/1.0, then close) within
    ``SCRAPE_TIMEOUT`` seconds; a broken connection or a failed collector never ends the
    loop.
    """
    host, port = parse_address(address)
    registry = _registry(collectors)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        raise _cannot(host, port, error) from None
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(_url(host, bound))

    async def answer(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(SCRAPE_TIMEOUT):
                await stream.send_all(_response(await _request_line(stream), registry))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away
        except Exception:
            log.exception("metrics: a scrape failed")
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(answer, listeners)


SCRAPE_TIMEOUT = 10.0
_MAX_REQUEST = 16 << 10


async def _request_line(stream: trio.SocketStream) -> list[bytes]:
    """The words of the request line, once the whole request head has arrived."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_REQUEST:
        data = await stream.receive_some(4096)
        if not data:
            break
        head += data
    return head.split(b"\n", 1)[0].split()


def _response(words: list[bytes], registry: CollectorRegistry) -> bytes:
    """A complete HTTP/1.0 answer: the metrics for GET (or HEAD) of /metrics or /."""
    status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, b""
    if len(words) < 2 or words[0] not in (b"GET", b"HEAD"):
        status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
    elif words[1].split(b"?")[0] not in (b"/metrics", b"/"):
        status, content_type, body = "404 Not Found", "text/plain", b"GET /metrics\n"
    else:
        try:
            body = generate_latest(registry)
        except Exception:
            log.exception("metrics: a collector failed")
            status, content_type, body = "500 Internal Server Error", "text/plain", b"failed\n"
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if words[:1] == [b"HEAD"] else head + body


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
