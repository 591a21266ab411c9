"""A stand-in for systemd's notify socket: what a ``Type=notify`` unit would be told."""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Message:
    """One datagram: its sender's pid (from the kernel, as systemd checks it) and fields."""

    pid: int
    fields: dict[str, str]
    seen: object = None  # what ``on_ready`` saw when READY=1 arrived


class NotifySocket:
    """A unix datagram socket at ``path``, or at an abstract address (``@...``) without
    one; ``address`` is what $NOTIFY_SOCKET must say.

    Messages are received by a thread. On READY=1 it calls ``on_ready(fields)`` at once,
    before reading on, so a test sees what a supervisor would find the moment it is told.
    """

    def __init__(
        self, on_ready: Callable[[dict[str, str]], object], path: Path | None = None
    ) -> None:
        self.address = str(path) if path else f"@casfs-test-{os.getpid()}-{os.urandom(4).hex()}"
        self.on_ready = on_ready
        self.messages: queue.Queue[Message] = queue.Queue()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.address[1:] if self.address.startswith("@") else self.address)
        self.sock.settimeout(0.2)
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self.closing.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = CREDENTIALS.unpack(payload[: CREDENTIALS.size])[0]
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            seen = None
            if fields.get("READY") == "1":
                try:
                    seen = self.on_ready(fields)
                except Exception as error:  # a failure the test asserts on, not a dead thread
                    seen = error
            self.messages.put(Message(pid, fields, seen))

    def next(self, timeout: float = 30) -> Message:
        """The next message; ``queue.Empty`` if none comes within ``timeout`` seconds."""
        return self.messages.get(timeout=timeout)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closing.set()
        self.thread.join()
        self.sock.close()
