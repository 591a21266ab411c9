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
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from bench.common import BenchError, bdi_readahead_kb, progress
from bench.processes import FuseProcess, HttpServer, watchdog
from bench.sessions import ClientSession, Data, FileSession, Session, small_name
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.peers import buildbox
from tests.servers import CasfsServer

# casfs mount's --cache-size here, and what its peak RSS target is measured against.
CASFS_CACHE = "512M"
CASFS_CACHE_BYTES = 512 << 20
# What casfs mount sets the kernel readahead to (its --readahead default).
CASFS_READAHEAD_KB = 1024


class Missing(Exception):
    """A peer cannot be installed or started here; the message says why."""


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
        ``stack`` closes) and keep ``data`` for the sessions; raise :class:`Missing` if it
        cannot run here."""
        self.data = data

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A fresh, cold session in a new directory (mountpoint, caches, logs); leaving the
        ``with`` stops and unmounts it, then removes the directory."""
        self.sessions += 1
        directory = self.root / "sessions" / f"{self.key}-{self.sessions}"
        directory.mkdir(parents=True)
        try:
            with self.open(directory) as session, watchdog(session.pid, self.title):
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

    @property
    def url(self) -> str | None:
        """The URL of the ``rclone serve http`` both modes mount, once one is set up."""
        return self._shared[0].url if self._shared else None

    def setup(self, stack: contextlib.ExitStack, data: Data) -> None:
        self.rclone = shutil.which("rclone")
        if self.rclone is None:
            raise Missing("rclone is not installed (make bench installs Debian's rclone)")
        if not self._shared:
            served = HttpServer(self.rclone, data.served, self.root / "rclone-serve.log")
            try:
                self._shared.append(stack.enter_context(served))
            except BenchError as error:
                raise Missing(str(error)) from None
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
