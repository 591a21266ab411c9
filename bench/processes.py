"""The processes of third-party peers, and a watchdog for any mount process.

Each is a ``tests.servers.Managed``: as a context manager it is always stopped, also when
its start fails half-way or the benchmark is interrupted. They run in sessions of their own,
so Ctrl-C reaches only the benchmark, which then stops them in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench.common import STEP_TIMEOUT, BenchError, progress
from tests.mounts import is_mounted, peak_rss_bytes
from tests.peers import buildbox
from tests.servers import Managed

MOUNT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class FuseProcess(Managed):
    """A third-party FUSE mount in the foreground, in its own session (so Ctrl-C reaches
    only this program, which then unmounts everything in order).

    ``start`` waits until the mountpoint is mounted (fails with the log's tail if the
    process exits or ``MOUNT_TIMEOUT`` passes); ``stop`` unmounts with ``fusermount3 -u``,
    then SIGTERM, then SIGKILL, and lazily unmounts whatever is left.
    """

    def __init__(self, name: str, command: Sequence[str], mountpoint: Path, log: Path) -> None:
        self.name = name
        self.command = list(command)
        self.mountpoint = mountpoint
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-1500:].strip()

    def start(self) -> FuseProcess:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.process = spawn(self.command, self.log)
        why = wait_until(lambda: is_mounted(self.mountpoint), self.process, "mount")
        if why:
            self.stop()
            raise BenchError(f"{self.name} {why}: {self.log_tail()}")
        return self

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        code = None
        if process is not None:
            code = terminate(process)
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        return code


def spawn(command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own (Ctrl-C reaches only the benchmark),
    its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> str:
    """Wait until ``ready()``; '' then, else why not (the process exited, or it did not
    ``what`` within ``MOUNT_TIMEOUT``)."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not ready():
        code = process.poll()
        if code is not None:
            return f"exited with {code}"
        if time.monotonic() > deadline:
            return f"did not {what} in time"
        time.sleep(0.02)
    return ""


def terminate(process: subprocess.Popen[bytes]) -> int:
    """Wait a little for a process that should exit by itself, then SIGTERM, then SIGKILL."""
    for send in (None, signal.SIGTERM, signal.SIGKILL):
        if send is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(send)
        try:
            return process.wait(timeout=STOP_TIMEOUT / 3)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


class HttpServer(Managed):
    """``rclone serve http DIR --read-only`` on a free 127.0.0.1 port."""

    def __init__(self, rclone: str, served: Path, log: Path) -> None:
        self.rclone = rclone
        self.served = served
        self.log = log
        self.port = buildbox.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> HttpServer:
        command = [self.rclone, "serve", "http", str(self.served), "--read-only"]
        command += ["--addr", f"127.0.0.1:{self.port}"]
        self.process = spawn(command, self.log)
        why = wait_until(lambda: port_accepts(self.port), self.process, "listen")
        if why:
            self.stop()
            raise BenchError(f"rclone serve http {why}: {self.log.read_text()[-500:]}")
        return self

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        return terminate(process)


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def watchdog(pid: int | None, title: str) -> Iterator[None]:
    """SIGKILL the mount process ``pid`` if the session outlasts ``STEP_TIMEOUT``: the
    kernel then aborts its FUSE connection, so a read stuck in it fails instead of hanging
    the benchmark."""
    if pid is None:
        yield
        return

    def kill() -> None:
        progress(f"  {title} (pid {pid}) hung for {STEP_TIMEOUT:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(STEP_TIMEOUT, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def peak_rss(pid: int | None) -> int | None:
    """The peak RSS (VmHWM) of a still running process, None if there is none."""
    if pid is None:
        return None
    try:
        return peak_rss_bytes(pid)
    except (OSError, RuntimeError):
        return None
