"""The contenders: casfs mount, its real peers, the direct client and a local file.

Every contender holds the same bytes: one large blob and ``small`` blobs of 4 KiB, laid out
by :class:`Data`. A :class:`Contender` is set up once (servers started, data uploaded) and
then opens any number of :class:`Session` objects; a session of a mount is a *fresh* mount
process with fresh cache directories, so it starts cold. The scenarios (``bench.scenarios``)
only talk to sessions.

- ``casfs``: ``casfs mount --remote grpc://...`` over ``casfs serve``; the blob is
  ``MNT/main/blobs/<hash>/<size>``.
- ``buildbox-fuse``: over ``buildbox-casd``, mounting a REAPI Directory tree that holds the
  blob as ``blob`` and the small blobs as ``small/NNNN``.
- ``rclone off`` / ``rclone full``: ``rclone mount :http:`` with ``--vfs-cache-mode off`` /
  ``full`` over ``rclone serve http`` of the directory holding the same files.
- ``direct``: a ``CasClient`` in this process, against the same ``casfs serve``.
- ``local``: the files themselves, on the local disk.

Peers that cannot be installed or started raise :class:`Missing` from ``setup``; the run
goes on without them and the table says why. Every process a contender starts is stopped
by the ``ExitStack`` given to ``setup`` or by the session's ``with``, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from bench.common import (
    KIB,
    STEP_TIMEOUT,
    BenchError,
    Stopwatch,
    bdi_readahead_kb,
    progress,
    read_file,
)
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount, is_mounted, peak_rss_bytes
from tests.peers import buildbox
from tests.servers import CasfsServer, Managed

T = TypeVar("T")

SMALL_SIZE = 4 * KIB
# casfs mount's --cache-size here, and what its peak RSS target is measured against.
CASFS_CACHE = "512M"
CASFS_CACHE_BYTES = 512 << 20
# What casfs mount sets the kernel readahead to (its --readahead default).
CASFS_READAHEAD_KB = 1024
MOUNT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class Missing(Exception):
    """A peer cannot be installed or started here; the message says why."""


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


# -- sessions -------------------------------------------------------------------------------


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
            error = ready.get(timeout=MOUNT_TIMEOUT)
        except queue.Empty:
            raise BenchError(f"direct client: not connected in {MOUNT_TIMEOUT:.0f} s") from None
        if error is not None:
            self._thread.join()
            raise BenchError(f"direct client: {error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT)

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


# -- mount processes ------------------------------------------------------------------------


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
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mountpoint):
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with {code}" if code is not None else "did not mount in time"
                raise BenchError(f"{self.name} {why}: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        code = None
        if process is not None:
            code = _terminate(process)
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        return code


def _terminate(process: subprocess.Popen[bytes]) -> int:
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
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not _port_accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Missing(f"rclone serve http did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        return _terminate(process)


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- contenders -----------------------------------------------------------------------------


@contextlib.contextmanager
def _watchdog(pid: int | None, title: str) -> Iterator[None]:
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


class Contender:
    """A way to hold the data: set up once, then fresh sessions on demand.

    ``is_mount``: a FUSE mount (its process's peak RSS is reported). ``command`` is shown
    in the report (how it was mounted), ``missing`` says why it could not run, if it could
    not.
    """

    key = ""
    title = ""
    is_mount = True
    command = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sessions = 0
        self.missing: str | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        """Start what the contender needs for the whole run (its servers are stopped when
        ``stack`` closes); raise :class:`Missing` if it cannot run here."""

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A fresh, cold session in a new directory (mountpoint, caches, logs); leaving the
        ``with`` stops and unmounts it, then removes the directory."""
        self.sessions += 1
        directory = self.root / "sessions" / f"{self.key}-{self.sessions}"
        directory.mkdir(parents=True)
        try:
            with self.open(directory) as session, _watchdog(session.pid, self.title):
                yield session
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def open(self, directory: Path) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError


class CasfsContender(Contender):
    key = "casfs"
    title = "casfs"

    def __init__(self, root: Path, server: CasfsServer) -> None:
        super().__init__(root)
        self.server = server
        self.args = ("--remote", server.endpoint, "--cache-size", CASFS_CACHE)
        self.command = "casfs mount MNT " + " ".join(self.args)
        self.data: Data | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        self.data = data

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Session]:
        assert self.data is not None
        mountpoint = directory / "mnt"
        with CasfsMount(mountpoint, *self.args) as mount:
            _wait_for_readahead(mountpoint)
            blobs = mountpoint / "main" / "blobs"
            yield FileSession(
                blobs / self.data.blob.hash / str(self.data.blob.size),
                [blobs / d.hash / str(d.size) for d in self.data.small],
                mountpoint / "main" / "uploads",
                mount.pid,
            )


def _wait_for_readahead(mountpoint: Path, timeout: float = 5.0) -> None:
    """casfs mount raises the kernel readahead just after the kernel's INIT, a moment after
    it says "mounted": wait for it so that no measurement starts with the default."""
    deadline = time.monotonic() + timeout
    while bdi_readahead_kb(mountpoint) != CASFS_READAHEAD_KB:
        if time.monotonic() > deadline:
            progress(f"  warning: readahead of {mountpoint} is not {CASFS_READAHEAD_KB} KiB")
            return
        time.sleep(0.02)


class DirectContender(Contender):
    key = "direct"
    title = "direct client"
    is_mount = False
    command = "CasClient in this process: read_range, stream, batch_read, upload_file"

    def __init__(self, root: Path, server: CasfsServer) -> None:
        super().__init__(root)
        self.server = server
        self.data: Data | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        self.data = data

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Session]:
        assert self.data is not None
        with ClientSession(self.server.endpoint, self.data) as session:
            yield session


class LocalContender(Contender):
    key = "local"
    title = "local file"
    is_mount = False
    command = "the same files on the local disk (cp in: cp to the same disk, no fsync)"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data: Data | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        self.data = data

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Session]:
        assert self.data is not None
        yield FileSession(self.data.blob_file, self.data.small_files(), directory, None)


class BuildboxFuseContender(Contender):
    key = "bbfuse"
    title = "buildbox-fuse"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.binary: Path | None = None
        self.casd: buildbox.Casd | None = None
        self.tree: Digest | None = None
        self.data: Data | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        installed = buildbox.install()
        if isinstance(installed, str):
            raise Missing(f"buildbox not installed: {installed}")
        self.binary = installed / "buildbox-fuse"
        try:
            self.casd = stack.enter_context(buildbox.Casd(self.root / "casd"))
        except buildbox.CasdError as error:
            raise Missing(f"buildbox-casd did not start: {error}") from None
        self.tree = trio.run(_upload_tree, self.casd.endpoint, data)
        self.data = data
        self.command = (
            f"buildbox-fuse --local=FRESH --remote={self.casd.http_url} "
            f"--input-digest-value={self.tree.hash}/{self.tree.size} MNT "
            f"(buildbox-casd --bind={self.casd.address}, its own copy of the data)"
        )

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Session]:
        assert self.binary and self.casd and self.tree and self.data
        mountpoint, local = directory / "mnt", directory / "local"
        local.mkdir()
        command = [
            str(self.binary),
            f"--local={local}",
            f"--remote={self.casd.http_url}",
            f"--input-digest-value={self.tree.hash}/{self.tree.size}",
            str(mountpoint),
        ]
        with FuseProcess("buildbox-fuse", command, mountpoint, directory / "fuse.log") as fuse:
            yield FileSession(
                mountpoint / "blob",
                [mountpoint / "small" / small_name(i) for i in range(len(self.data.small))],
                None,
                fuse.pid,
                "it takes writes but keeps them local: nothing reaches the remote CAS, "
                "neither on close nor at unmount",
            )


async def _upload_tree(endpoint: str, data: Data) -> Digest:
    """Upload the blob, the small blobs and a Directory tree holding them (``blob``,
    ``small/NNNN``) to a CAS serving the empty instance name; returns the root's digest."""
    async with CasClient(remote(endpoint, instance="")) as client:
        await client.upload_file(data.blob_file)
        pieces = [path.read_bytes() for path in data.small_files()]
        await client.batch_update(list(zip(data.small, pieces, strict=True)))
        small_dir = re_pb2.Directory(
            files=[
                re_pb2.FileNode(name=small_name(i), digest=digest.to_proto())
                for i, digest in enumerate(data.small)
            ]
        )
        small_digest = await client.upload_bytes(small_dir.SerializeToString())
        root = re_pb2.Directory(
            files=[re_pb2.FileNode(name="blob", digest=data.blob.to_proto())],
            directories=[re_pb2.DirectoryNode(name="small", digest=small_digest.to_proto())],
        )
        return await client.upload_bytes(root.SerializeToString())


class RcloneContender(Contender):
    """``rclone mount :http:`` in one VFS cache mode; both modes share one ``serve http``."""

    def __init__(self, root: Path, mode: str, server: list[HttpServer]) -> None:
        super().__init__(root)
        self.mode = mode
        self.key = f"rclone-{mode}"
        self.title = f"rclone {mode}"
        self._shared = server  # empty until the first of the two starts it
        self.rclone: str | None = None
        self.data: Data | None = None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        self.rclone = shutil.which("rclone")
        if self.rclone is None:
            raise Missing("rclone is not installed (make bench installs Debian's rclone)")
        if not self._shared:
            served = HttpServer(self.rclone, data.served, self.root / "rclone-serve.log")
            self._shared.append(stack.enter_context(served))
        self.data = data
        self.command = (
            f"rclone mount :http: MNT --http-url {self._shared[0].url} --read-only "
            f"--vfs-cache-mode {self.mode} --cache-dir FRESH "
            f"(rclone serve http {data.served} --read-only)"
        )

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Session]:
        assert self.rclone and self.data
        mountpoint, cache = directory / "mnt", directory / "cache"
        command = [
            self.rclone,
            "mount",
            ":http:",
            str(mountpoint),
            "--http-url",
            self._shared[0].url,
            "--read-only",
            "--vfs-cache-mode",
            self.mode,
            "--cache-dir",
            str(cache),
        ]
        with FuseProcess(self.title, command, mountpoint, directory / "mount.log") as fuse:
            yield FileSession(
                mountpoint / "blob",
                [mountpoint / "small" / small_name(i) for i in range(len(self.data.small))],
                None,
                fuse.pid,
                "rclone serve http is read-only",
            )


def peak_rss(pid: int | None) -> int | None:
    """The peak RSS (VmHWM) of a still running process, None if there is none."""
    if pid is None:
        return None
    try:
        return peak_rss_bytes(pid)
    except (OSError, RuntimeError):
        return None
