"""Counts and latencies of gRPC calls by method and status code, on either side.

``RpcStats.client_channel(channel)`` wraps a client channel; ``RpcStats.server_interceptor(known)``
goes into ``grpc.server(interceptors=...)``. A call is recorded once, when it ends (a stream
when its status arrives, a served stream when its last message has gone or it failed), never
per message, so streaming throughput does not pay for the bookkeeping. Nothing is recorded
unless metrics are asked for: without them no interceptor is installed at all.

Thread safety: grpc ends calls on its own threads; one lock guards the table, and
``snapshot()`` hands out copies. A recording failure is never allowed to fail a call.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

# Upper bounds in seconds; +Inf is implied. From one small unary call on loopback to a
# blob streamed for a minute.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


@dataclass
class CallStats:
    """The calls of one (method, code): how many, their total time, and a histogram whose
    ``buckets[i]`` counts calls of at most ``LATENCY_BUCKETS[i]`` seconds (not cumulative;
    the last slot counts the longer ones)."""

    count: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


# The label every method a server does not serve shares: a client may call any name it
# likes, and each would otherwise become a series of its own.
OTHER_METHOD = "/other/other"


def split_method(method: str) -> tuple[str, str]:
    """``/google.bytestream.ByteStream/Read`` as ``("google.bytestream.ByteStream", "Read")``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcStats:
    """Per (full method name, status code name): a ``CallStats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], CallStats] = {}

    def record(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        name = code.name if code is not None else "UNKNOWN"
        slot = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            stats = self._calls.get((method, name))
            if stats is None:
                stats = self._calls[(method, name)] = CallStats()
            stats.count += 1
            stats.seconds += seconds
            stats.buckets[slot] += 1

    def snapshot(self) -> dict[tuple[str, str], CallStats]:
        with self._lock:
            calls = self._calls.items()
            return {key: CallStats(s.count, s.seconds, list(s.buckets)) for key, s in calls}

    def client_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """``channel``, recording every call made through it."""
        return grpc.intercept_channel(channel, _ClientInterceptor(self))

    def server_interceptor(self, known: frozenset[str]) -> grpc.ServerInterceptor[Any, Any]:
        """An interceptor that records every call a server handles: those to the full
        method names in ``known`` by name, all others as ``OTHER_METHOD``."""
        return _ServerInterceptor(self, known)


if TYPE_CHECKING:  # generic only in the type stubs
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
    _Server = grpc.ServerInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor
    _StreamStream = grpc.StreamStreamClientInterceptor
    _Server = grpc.ServerInterceptor


class _ClientInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Times each call from its start to its end (the done callback), whatever its kind."""

    def __init__(self, stats: RpcStats) -> None:
        self._stats = stats

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        started = time.perf_counter()
        call = continuation(details, request)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        stats = self._stats

        def done(finished: Any) -> None:
            try:
                code = finished.code()
            except Exception:  # a call that failed before it started has no code to give
                code = grpc.StatusCode.UNKNOWN
            stats.record(method, code, time.perf_counter() - started)

        call.add_done_callback(done)
        return call

    intercept_unary_unary = _intercept  # type: ignore[assignment]
    intercept_unary_stream = _intercept  # type: ignore[assignment]
    intercept_stream_unary = _intercept  # type: ignore[assignment]
    intercept_stream_stream = _intercept  # type: ignore[assignment]


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status a handler ended with: what it set (``set_code``, ``abort``), else OK, or
    UNKNOWN for an exception that set nothing (grpc's own answer to it)."""
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class _ServerInterceptor(_Server):
    """Wraps each method's behaviour: a unary answer is timed around the call, a streamed
    one from the first request to the end of the response iterator."""

    def __init__(self, stats: RpcStats, known: frozenset[str]) -> None:
        self._stats = stats
        self._known = known

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method not in self._known:
            method = OTHER_METHOD
        record = self._stats.record
        streaming = handler.response_streaming
        kind = ("stream" if handler.request_streaming else "unary") + (
            "_stream" if streaming else "_unary"
        )
        behavior = getattr(handler, kind)

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                response = behavior(request, context)
            except BaseException:
                outcome = _code(context, failed=True)
                raise
            else:
                outcome = _code(context, failed=False)
                return response
            finally:
                record(method, outcome, time.perf_counter() - started)

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                yield from behavior(request, context)
            except GeneratorExit:  # the client went away mid-stream
                outcome = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                outcome = _code(context, failed=True)
                raise
            else:
                outcome = _code(context, failed=False)
            finally:
                record(method, outcome, time.perf_counter() - started)

        wrap = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }[kind]
        return wrap(
            stream if streaming else unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
