"""``StopSignals``: waiting for SIGTERM or SIGINT in a process full of grpc's threads.

The kernel delivers a process-wide signal to any thread that does not block it. Python
runs its handlers in the main thread only, the next time that thread runs Python: a main
thread blocked in an untimed wait (``threading.Event.wait()``) never does when the signal
went to one of grpc's threads. And a handler that sets a ``threading.Event`` can deadlock
the main thread if the signal lands while that thread holds the event's own lock inside
``wait``.

So the handlers do nothing, and the waiting goes through ``signal.set_wakeup_fd``: the C
handler, in whatever thread the signal reached, writes the signal's number into a socket
the main thread waits on with ``select``. No lock is taken in a handler.

Used by ``casfs serve``'s main thread only (``set_wakeup_fd`` and ``signal.signal`` refuse
other threads). ``close`` gives the wakeup fd and the handlers back.
"""

from __future__ import annotations

import select
import signal
import socket
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _noted(signum: int, frame: FrameType | None) -> None:
    """A Python handler that does nothing: its being there makes the C handler write the
    signal's number to the wakeup fd."""


class StopSignals:
    """From construction on, SIGTERM and SIGINT no longer end the process: ``wait``
    returns once one has come (before ``wait`` or during it)."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _noted) for signum in STOP_SIGNALS}

    def wait(self) -> int:
        """Block until SIGTERM or SIGINT has come; returns which. Other signals with a
        Python handler also wake the wait, which goes on waiting."""
        while True:
            select.select([self._read], [], [])
            try:
                numbers = self._read.recv(256)
            except BlockingIOError:
                continue
            for number in numbers:
                if number in STOP_SIGNALS:
                    return number

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()
