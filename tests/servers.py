"""Real server processes for tests: ``casfs serve`` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parent.parent


class Managed:
    """A process a test starts and must always stop: ``with`` guarantees the stop."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        # A start interrupted half-way (Ctrl-C, a timeout) must not leave the process behind:
        # without this, __exit__ would never run.
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class CasfsServer(Managed):
    """``casfs serve`` on 127.0.0.1; keeps its port across ``kill()`` and ``start()``.

    Used as a context manager, it never leaves a process behind, even when a test fails.
    """

    def __init__(self, store: Path, *extra: str, listen: str | None = None) -> None:
        self.store = store
        self.extra = extra
        self.listen = listen
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log = store.parent / f"{store.name}-server.log"

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> CasfsServer:
        """Start and wait until it listens (the port is kept from the previous start)."""
        log = open(self.log, "a")  # noqa: SIM115 - owned by the process's lifetime
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "casfs",
                "serve",
                "--store",
                str(self.store),
                "--listen",
                self.listen or f"127.0.0.1:{self.port}",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        for line in self.process.stdout:
            if "listening on" in line:
                if not (self.listen or "").startswith("unix:"):
                    self.port = int(line.rsplit(":", 1)[1])
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError(f"casfs serve did not start: {self.log.read_text()[-2000:]}")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Kill the server abruptly (SIGKILL by default) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """Stop it cleanly (SIGTERM); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    @contextlib.contextmanager
    def killed_at_commit(self) -> Iterator[list[int]]:
        """SIGKILL the server at the next rename it makes (an upload moving into the store,
        every byte received, verified and fsynced), then start it again on the same port
        and store. strace stops the server in that system call and kills it there, so the
        kill lands in that window whatever the machine's speed. Yields a list that gets
        the killed process's id (empty if nothing inside the block renamed)."""
        assert self.process is not None
        server = self.process
        tracer = subprocess.Popen(
            [
                "strace", "-f", "-o", os.devnull, "-p", str(server.pid),
                "-e", "trace=rename,renameat,renameat2",
                "-e", "inject=rename,renameat,renameat2:signal=SIGKILL",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert tracer.stderr is not None
        attached = tracer.stderr.readline()  # "strace: Process N attached ..."
        assert "attached" in attached, attached
        killed: list[int] = []

        def restart() -> None:
            tracer.wait()  # it ends once the server is dead, or when told to detach
            if server.poll() == -signal.SIGKILL:
                killed.append(server.pid)
                self.start()

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            yield killed
        finally:
            if tracer.poll() is None:
                tracer.terminate()  # detaches; the server goes on untouched
            thread.join()
            tracer.stderr.close()

    @contextlib.contextmanager
    def killed_mid_upload(self, after: int) -> Iterator[list[int]]:
        """SIGKILL the server once an upload session holds ``after`` bytes, then start it
        again on the same port and store. Yields a list that gets the bytes held at the
        kill (empty if the uploads inside the block finished first)."""
        parts = self.store / "uploads"
        killed_at: list[int] = []

        def killer() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not done.is_set():
                sizes = [p.stat().st_size for p in parts.glob("*.part")]
                if sizes and sizes[0] > after:
                    self.kill(signal.SIGKILL)
                    killed_at.append(sizes[0])
                    self.start()
                    return
                time.sleep(0.001)

        done = threading.Event()
        thread = threading.Thread(target=killer)
        thread.start()
        try:
            yield killed_at
        finally:
            done.set()
            thread.join()
