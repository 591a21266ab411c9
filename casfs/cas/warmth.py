"""Keep a grpc channel's spin thread alive while unary calls follow one another.

Why: grpcio delivers the completion of a ``.future()`` call through a "channel spin
thread" that it runs only while the channel has a call in flight
(``_channel_managed_call_management``: the thread is started when the count of such calls
goes from 0 to 1 and returns when it falls back to 0). Unary calls made one after another
(a reader opening small files in turn) leave none in between, so every call starts a new
thread and waits until it runs: about 0.3 ms and a third of the client's CPU per small
call on this machine (docs/performance.md). No channel option changes that.

How: while calls keep coming, one call stays pending on the channel: a GetCapabilities
(read-only, no side effect whatever happens) opened as a client stream whose request is
never sent, so the server waits for it and answers nothing. It carries a deadline of
``linger`` seconds, so it ends by itself at most that long after the last call, on both
sides; the next call after that starts a fresh one. The cost is one call and one thread
start per ``linger`` seconds of activity, and on the server one waiting call for as long.

Failure: the held call's own outcome (deadline, cancel, a refusal) is ignored; it can
only end early, which costs the next call a thread start as before. Closing the channel
cancels it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from casfs._proto import remote_execution_pb2 as re_pb2

_METHOD = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"
DEFAULT_LINGER = 1.0  # seconds a held call outlives the last call that renewed it


def default_linger() -> float:
    """``DEFAULT_LINGER``, or ``CASFS_CHANNEL_LINGER`` (seconds; 0 turns the held call off,
    so that a benchmark can compare both in one run). An unreadable value is the default."""
    try:
        return float(os.environ.get("CASFS_CHANNEL_LINGER", DEFAULT_LINGER))
    except ValueError:
        return DEFAULT_LINGER


class ChannelWarmth:
    """One pending call on a channel while unary calls keep coming (see the module)."""

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        linger: float | None = None,
    ) -> None:
        """``channel`` is the raw channel (not an intercepted one: the held call is not
        one of the client's calls and is not counted); ``metadata`` the headers a call
        needs to be let in (a token); ``linger`` <= 0 turns this off, None is
        ``default_linger()``."""
        self._hold = channel.stream_unary(
            _METHOD,
            request_serializer=re_pb2.GetCapabilitiesRequest.SerializeToString,
            response_deserializer=None,
        )
        self._metadata = tuple(metadata)
        self._linger = default_linger() if linger is None else linger
        self._until = 0.0  # when the held call's deadline passes (monotonic)
        self.holds = 0  # held calls started (for tests)

    def touch(self) -> None:
        """Called before each unary call: make sure a held call outlasts it by about
        ``linger``. Cheap when one does (a clock read); never raises for the held call."""
        if self._linger <= 0:
            return
        now = time.monotonic()
        if now < self._until - self._linger / 2:
            return
        self._until = now + self._linger
        released = threading.Event()

        def never_sent() -> Iterator[re_pb2.GetCapabilitiesRequest]:
            # grpc's request-consuming thread waits here until the call is over.
            released.wait(self._linger + 5.0)
            return
            yield  # pragma: no cover - makes this a generator

        try:
            future: Any = self._hold.future(
                never_sent(), timeout=self._linger, metadata=self._metadata
            )
        except (grpc.RpcError, ValueError):  # a closed channel: nothing to keep warm
            released.set()
            return
        future.add_done_callback(lambda _: released.set())
        self.holds += 1
