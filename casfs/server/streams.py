"""Streaming calls under bounds: how many at once, and how long one may stay silent.

grpcio's threaded server gives every running call a worker thread, and a stream keeps its
thread while it waits for its client. So the server holds at most ``max_streams`` streams
(ByteStream Read and Write, GetTree, and tvix castore's Read, Put and Directory Get and
Put) at once, refusing more with RESOURCE_EXHAUSTED, and its pool has ``UNARY_THREADS``
threads beyond that: unary calls (GetCapabilities, FindMissingBlobs,
batches, QueryWriteStatus) are answered however many streams are open. A stream that moves
no message for ``idle_timeout`` seconds (a client that sends one message and stops, or a
reader that stops reading) is ended with DEADLINE_EXCEEDED, which frees its thread; what
a Write stream had sent stays in its upload session, to be resumed.

Concurrency notes: ``StreamGuard`` is shared by all worker threads under one lock. A
watchdog thread runs only while streams are held (so a server that is stopped leaves no
thread behind); it cancels an idle call through grpcio, which wakes the handler's blocked
receive or send with an ``RpcError``, and the handler unwinds as for a client that went away.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import grpc

from casfs.config import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS
from casfs.server.grpc_errors import RequestError

log = logging.getLogger("casfs.server")

UNARY_THREADS = 32  # worker threads beyond max_streams, for unary calls and refusals

T = TypeVar("T")


class Stream:
    """One held stream: ``touch`` it whenever a message moves."""

    def __init__(self, context: grpc.ServicerContext, what: str) -> None:
        self.context = context
        self.what = what
        self.last = time.monotonic()
        self.ended = False
        self.busy = False  # the server works for it (a commit): never idle meanwhile

    def touch(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Mark a stretch where the server, not the client, is slow (verifying and
        committing an upload): the stream is not idle during it."""
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            self.touch()

    def watch(self, messages: Iterator[T]) -> Iterator[T]:
        """``messages``, touching the stream at each one."""
        for message in messages:
            self.touch()
            yield message

    def end_idle(self, idle_timeout: float) -> None:
        """End the call with DEADLINE_EXCEEDED (CANCELLED where grpcio offers no status)."""
        self.ended = True
        details = f"{self.what}: no message for {idle_timeout:g} seconds; resume later"
        log.info("%s", details)
        call = getattr(getattr(self.context, "_rpc_event", None), "call", None)
        try:
            # grpcio's own cancel() sends CANCELLED; its call object can send a status.
            call.cancel(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details)  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            self.context.cancel()


class StreamGuard:
    """Admits at most ``max_streams`` streams and ends those idle for ``idle_timeout``."""

    def __init__(
        self,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if max_streams < 1 or idle_timeout <= 0:
            raise ValueError("max_streams and idle_timeout must be positive")
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._streams: set[Stream] = set()
        self._watchdog: threading.Thread | None = None

    @property
    def threads(self) -> int:
        """The worker threads a server needs for these streams and its unary calls."""
        return self.max_streams + UNARY_THREADS

    @contextlib.contextmanager
    def hold(self, context: grpc.ServicerContext, what: str) -> Iterator[Stream]:
        """Hold a stream slot for the block. Raises ``RequestError`` (RESOURCE_EXHAUSTED)
        when all are taken; the slot is given back however the block ends."""
        stream = Stream(context, what)
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server holds {self.max_streams} streams (--max-streams); try again",
                )
            self._streams.add(stream)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="casfs-stream-watchdog", daemon=True
                )
                self._watchdog.start()
        try:
            yield stream
        finally:
            with self._lock:
                self._streams.discard(stream)

    def _watch(self) -> None:
        """End idle streams until none is held; checks a few times per idle period."""
        tick = min(1.0, self.idle_timeout / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                if not self._streams:
                    self._watchdog = None
                    return
                idle = [
                    s
                    for s in self._streams
                    if not (s.ended or s.busy) and now - s.last > self.idle_timeout
                ]
            for stream in idle:
                stream.end_idle(self.idle_timeout)
