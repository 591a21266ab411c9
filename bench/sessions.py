"""Sessions: one cold instance of a contender, and what the scenarios time on it.

A :class:`FileSession` reads and writes files with system calls (any mount, or the local
disk); a :class:`ClientSession` does the same through casfs's ``CasClient``. Both read the
bytes laid out by :class:`Data`: one large blob and small blobs of 4 KiB.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from bench.common import KIB, BenchError, Stopwatch, read_file
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote

T = TypeVar("T")

SMALL_SIZE = 4 * KIB
CONNECT_TIMEOUT = 30.0


class NotApplicable(Exception):
    """A scenario has no equivalent for this contender; the message says why."""


@dataclass(frozen=True)
class Data:
    """The bytes every contender holds: ``served/blob`` and ``served/small/NNNN`` on the
    local disk, uploaded as blobs to each server."""

    served: Path
    blob: Digest
    small: tuple[Digest, ...]

    @property
    def blob_file(self) -> Path:
        return self.served / "blob"

    def small_files(self) -> list[Path]:
        return [self.served / "small" / small_name(i) for i in range(len(self.small))]


def small_name(index: int) -> str:
    return f"{index:04d}"


class Session:
    """One cold instance of a contender: what the scenarios time.

    ``pid`` is the process whose peak RSS is reported (None: nothing to report).
    """

    pid: int | None = None

    def first_byte(self) -> tuple[float, bytes]:
        """Seconds from open to the first byte of the blob, and that byte."""
        raise NotImplementedError

    def read_all(self, size: int) -> float:
        """Seconds from open to the last byte of the blob; fails unless ``size`` came."""
        raise NotImplementedError

    def preads(self, offsets: Sequence[int], length: int) -> tuple[list[float], list[bytes]]:
        """Each ranged read of ``length`` bytes timed on its own (the open is not timed)."""
        raise NotImplementedError

    def read_small(self) -> tuple[float, list[bytes]]:
        """Seconds to read every small blob whole, one after the other, and their bytes."""
        raise NotImplementedError

    def copy_in(self, source: Path, name: str) -> float:
        """Seconds to store ``source`` as a new blob (or file) ``name``, until it is kept."""
        raise NotImplementedError


class FileSession(Session):
    """Reads files with system calls: any mount, or the local disk."""

    def __init__(
        self,
        blob: Path,
        small: Sequence[Path],
        uploads: Path | None,
        pid: int | None,
        no_uploads: str = "",
    ) -> None:
        self.blob = blob
        self.small = small
        self.uploads = uploads
        self.pid = pid
        self.no_uploads = no_uploads

    def first_byte(self) -> tuple[float, bytes]:
        with Stopwatch() as watch:
            fd = os.open(self.blob, os.O_RDONLY)
            data = os.read(fd, 1)
        os.close(fd)
        return watch.seconds, data

    def read_all(self, size: int) -> float:
        with Stopwatch() as watch:
            got = read_file(self.blob)
        if got != size:
            raise BenchError(f"{self.blob}: read {got} bytes, not {size}")
        return watch.seconds

    def preads(self, offsets: Sequence[int], length: int) -> tuple[list[float], list[bytes]]:
        times: list[float] = []
        chunks: list[bytes] = []
        fd = os.open(self.blob, os.O_RDONLY)
        try:
            for offset in offsets:
                start = time.perf_counter()
                chunks.append(os.pread(fd, length, offset))
                times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
        return times, chunks

    def read_small(self) -> tuple[float, list[bytes]]:
        chunks: list[bytes] = []
        with Stopwatch() as watch:
            for path in self.small:
                fd = os.open(path, os.O_RDONLY)
                try:
                    chunks.append(os.read(fd, SMALL_SIZE + 1))
                finally:
                    os.close(fd)
        return watch.seconds, chunks

    def copy_in(self, source: Path, name: str) -> float:
        if self.uploads is None:
            raise NotApplicable(self.no_uploads)
        target = self.uploads / name
        with Stopwatch() as watch:
            done = subprocess.run(["cp", str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"cp {source} {target}: {done.stderr.strip()}")
        return watch.seconds


class ClientSession(Session):
    """The direct client: one connected ``CasClient`` in a trio thread of this process.

    Every operation runs in that trio loop and times itself there, so the hop between
    threads is not in the figures. Leaving the ``with`` closes the client and joins the
    thread (a failing operation re-raises here and still leaves it).
    """

    def __init__(self, endpoint: str, data: Data) -> None:
        self.endpoint = endpoint
        self.data = data
        self._token: trio.lowlevel.TrioToken | None = None
        self._client: CasClient | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClientSession:
        ready: queue.Queue[BaseException | None] = queue.Queue()

        async def main() -> None:
            try:
                async with CasClient(remote(self.endpoint)) as client:
                    await client.capabilities()  # connected, as a mount would be
                    self._client = client
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    ready.put(None)
                    await self._stop.wait()
            except BaseException as error:
                ready.put(error)
                raise

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        try:
            error = ready.get(timeout=CONNECT_TIMEOUT)
        except queue.Empty:
            raise BenchError(f"direct client: not connected in {CONNECT_TIMEOUT:.0f} s") from None
        if error is not None:
            self._thread.join()
            raise BenchError(f"direct client: {error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT)

    def _run(self, fn: Callable[[CasClient], Awaitable[T]]) -> T:
        assert self._client is not None and self._token is not None
        client = self._client
        return trio.from_thread.run(lambda: fn(client), trio_token=self._token)

    def first_byte(self) -> tuple[float, bytes]:
        async def op(client: CasClient) -> tuple[float, bytes]:
            with Stopwatch() as watch:
                data = await client.read_range(self.data.blob, 0, 1)
            return watch.seconds, data

        return self._run(op)

    def read_all(self, size: int) -> float:
        async def op(client: CasClient) -> float:
            received = 0
            with Stopwatch() as watch:
                async for chunk in client.stream(self.data.blob):
                    received += len(chunk)
            if received != size:
                raise BenchError(f"client stream: {received} of {size} bytes")
            return watch.seconds

        return self._run(op)

    def preads(self, offsets: Sequence[int], length: int) -> tuple[list[float], list[bytes]]:
        async def op(client: CasClient) -> tuple[list[float], list[bytes]]:
            times: list[float] = []
            chunks: list[bytes] = []
            for offset in offsets:
                start = time.perf_counter()
                chunks.append(await client.read_range(self.data.blob, offset, length))
                times.append(time.perf_counter() - start)
            return times, chunks

        return self._run(op)

    def read_small(self) -> tuple[float, list[bytes]]:
        async def op(client: CasClient) -> tuple[float, list[bytes]]:
            with Stopwatch() as watch:
                found = await client.batch_read(self.data.small)
            return watch.seconds, [found[digest] for digest in self.data.small]

        return self._run(op)

    def copy_in(self, source: Path, name: str) -> float:
        async def op(client: CasClient) -> float:
            with Stopwatch() as watch:
                await client.upload_file(source)
            return watch.seconds

        return self._run(op)
