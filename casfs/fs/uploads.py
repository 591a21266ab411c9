"""The write side's state: the ``uploads/`` trees, spool files, hashing, and finalize.

No FUSE in here: ``operations.py`` maps calls onto these objects and their errors onto
errno values.

A file written under ``<instance>/uploads/`` is spooled to ``<cache dir>/spool/<id>.data``
(mode 0600), hashed as it is written when the writes are sequential (rehashed otherwise),
and finalized when its last writer closes it: FindMissingBlobs first, then
BatchUpdateBlobs for small blobs or a resumable ByteStream Write. Next to each spool file a
``<id>.json`` says where the file belongs, so that a mount that ends (or dies) before an
upload is committed leaves it to the next mount of the same cache directory, which
finishes it.

Concurrency notes: everything runs in the mount's trio thread. Each file has a
``trio.Lock`` held while it is finalized, so concurrent flushes of one file upload it
once; writes to a file being finalized are refused (EBUSY). ``Uploads.active`` counts
finalizations in progress, so that an unmount can wait for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest, DigestBuilder, DigestFunction, digest_file
from casfs.fs.errors import MountError

log = logging.getLogger("casfs.fs")
_ids = itertools.count(1)


class UploadError(Exception):
    """An upload-side refusal with the errno a user should see."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(eq=False)
class Entry:
    """A name in an ``uploads/`` tree."""

    name: str
    parent: DirEntry | None
    id: int = field(default_factory=lambda: next(_ids))
    mtime_ns: int = field(default_factory=time.time_ns)

    def path(self) -> str:
        """The path below ``uploads/``."""
        parts = []
        entry: Entry | None = self
        while entry is not None and entry.parent is not None:
            parts.append(entry.name)
            entry = entry.parent
        return "/".join(reversed(parts))

    def touch(self) -> None:
        self.mtime_ns = time.time_ns()
        directory = self.parent
        while directory is not None:  # a change below invalidates every Directory digest
            directory.digest = None
            directory = directory.parent


@dataclass(eq=False)
class DirEntry(Entry):
    children: dict[str, Entry] = field(default_factory=dict)
    digest: Digest | None = None


@dataclass(eq=False)
class SymlinkEntry(Entry):
    target: str = ""


@dataclass(eq=False)
class FileEntry(Entry):
    """A file being written (``spool`` set) or committed (``digest`` set)."""

    instance: str = ""
    spool: Path | None = None
    size: int = 0
    mode: int = 0o644
    digest: Digest | None = None
    expected: Digest | None = None  # direct writes to blobs/<hash>/<size>
    writers: int = 0
    fd: int | None = None
    hasher: DigestBuilder | None = field(default_factory=DigestBuilder)
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def committed(self) -> bool:
        return self.digest is not None and self.spool is None

    @property
    def function(self) -> DigestFunction:
        return self.expected.function if self.expected is not None else DigestFunction.SHA256

    def restart_hash(self) -> None:
        self.hasher = DigestBuilder(self.function)


class Spool:
    """Spool files and their metadata in ``<cache dir>/spool``, locked to one mount."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "spool"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        self._lock_fd = os.open(cache_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise MountError(f"cache directory {cache_dir} is in use by another mount") from None

    def close(self) -> None:
        os.close(self._lock_fd)

    def create(self, entry: FileEntry) -> None:
        """Give ``entry`` a new, empty spool file and record where it belongs."""
        key = uuid.uuid4().hex
        entry.spool = self.dir / f"{key}.data"
        entry.fd = os.open(entry.spool, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.record(entry)

    def record(self, entry: FileEntry) -> None:
        """(Re)write the metadata of a spooled file: its instance and path, or digest."""
        assert entry.spool is not None
        meta = {
            "instance": entry.instance,
            "path": entry.path() if entry.expected is None else None,
            "expected": str(entry.expected) if entry.expected is not None else None,
            "function": (entry.expected.function.name_lower if entry.expected else "sha256"),
            "mode": entry.mode,
        }
        tmp = entry.spool.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.chmod(tmp, 0o600)
        tmp.replace(entry.spool.with_suffix(".json"))

    def discard(self, entry: FileEntry) -> None:
        """Forget a spool file: it was committed, or its entry removed."""
        if entry.fd is not None:
            os.close(entry.fd)
            entry.fd = None
        if entry.spool is not None:
            entry.spool.with_suffix(".json").unlink(missing_ok=True)
            entry.spool.unlink(missing_ok=True)
            entry.spool = None

    def leftovers(self) -> Iterator[tuple[Path, dict[str, object]]]:
        """Spool files a previous mount left behind, with their metadata."""
        for meta_path in sorted(self.dir.glob("*.json")):
            data = meta_path.with_suffix(".data")
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                log.warning("spool: unreadable metadata %s, left alone", meta_path)
                continue
            if data.exists():
                yield data, meta
            else:
                meta_path.unlink(missing_ok=True)


class Uploads:
    """The ``uploads/`` trees of all instances and the finalize logic."""

    def __init__(self, clients: Mapping[str, CasClient], spool: Spool) -> None:
        self.clients = clients
        self.spool = spool
        self.roots = {name: DirEntry(name="", parent=None) for name in clients}
        self.active = 0
        self.idle = trio.Event()
        self.idle.set()

    # -- files ------------------------------------------------------------------------------

    def new_file(
        self, instance: str, parent: DirEntry | None, name: str, mode: int, expected: Digest | None
    ) -> FileEntry:
        """A new empty file (replacing a file of that name) with its spool file."""
        entry = FileEntry(
            name=name, parent=parent, instance=instance, mode=mode & 0o777, expected=expected
        )
        entry.restart_hash()
        if parent is not None:
            old = parent.children.get(name)
            if isinstance(old, DirEntry):
                raise UploadError(errno.EISDIR, f"{name} is a directory")
            if isinstance(old, FileEntry):
                self.remove(old)
            parent.children[name] = entry
        self.spool.create(entry)
        entry.touch()
        return entry

    def reopen_for_writing(self, entry: FileEntry, truncate: bool) -> None:
        """Open a file for writing: pending files as they are; committed ones only to be
        replaced (O_TRUNC), which starts a new upload."""
        if entry.lock.locked():
            raise UploadError(errno.EBUSY, f"{entry.path()} is being uploaded")
        if entry.committed:
            if not truncate and entry.size:
                raise UploadError(errno.EACCES, f"{entry.path()} is committed and read-only")
            self._respool(entry)
        elif truncate:
            self.truncate(entry, 0)
        elif entry.fd is None and entry.spool is not None:
            entry.fd = os.open(entry.spool, os.O_RDWR)

    def _respool(self, entry: FileEntry) -> None:
        """Start a committed file over as a new, empty upload."""
        entry.digest = None
        entry.size = 0
        entry.restart_hash()
        self.spool.create(entry)

    def write(self, entry: FileEntry, offset: int, data: bytes) -> int:
        if entry.committed and entry.size == 0 and not entry.lock.locked():
            # `echo x > f` closes a duplicate descriptor (and so commits the empty file)
            # before it writes: the first write starts the upload over.
            self._respool(entry)
        if entry.fd is None or entry.lock.locked():
            raise UploadError(errno.EBUSY, f"{entry.path()} is being uploaded")
        written = os.pwrite(entry.fd, data, offset)
        if entry.hasher is not None and offset == entry.hasher.size:
            entry.hasher.update(data[:written])
        else:
            entry.hasher = None  # not sequential: rehash at finalize
        entry.size = max(entry.size, offset + written)
        entry.digest = None
        entry.touch()
        return written

    def truncate(self, entry: FileEntry, size: int) -> None:
        if entry.committed or entry.spool is None:
            raise UploadError(errno.EACCES, f"{entry.path()} is committed and read-only")
        os.truncate(entry.spool, size)
        if size == 0:
            entry.restart_hash()
        elif entry.hasher is None or size != entry.hasher.size:
            entry.hasher = None
        entry.size = size
        entry.digest = None
        entry.touch()

    def read_spool(self, entry: FileEntry, offset: int, size: int) -> bytes:
        assert entry.spool is not None
        if entry.fd is not None:
            return os.pread(entry.fd, size, offset)
        with open(entry.spool, "rb") as file:
            file.seek(offset)
            return file.read(size)

    def remove(self, entry: Entry) -> None:
        """Drop an entry (a committed blob stays in the CAS; a pending upload is cancelled)."""
        if isinstance(entry, FileEntry):
            self.spool.discard(entry)
        elif isinstance(entry, DirEntry):
            for child in list(entry.children.values()):
                self.remove(child)
        if entry.parent is not None and entry.parent.children.get(entry.name) is entry:
            del entry.parent.children[entry.name]
            entry.parent.touch()

    def rerecord(self, entry: Entry) -> None:
        """After a rename: pending files below record their new paths."""
        if isinstance(entry, FileEntry) and entry.spool is not None and entry.expected is None:
            self.spool.record(entry)
        elif isinstance(entry, DirEntry):
            for child in entry.children.values():
                self.rerecord(child)

    # -- finalize ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self.active += 1
        self.idle = trio.Event() if self.active == 1 else self.idle
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def finalize(self, entry: FileEntry) -> Digest:
        """Hash and upload a file unless the server has it; return its digest.

        On success the spool file is gone and the file reads from the CAS. On failure the
        spool file stays, so a later flush, fsync or mount can finish it. A direct write
        whose content does not match its name fails with EIO and stores nothing.
        Cancellation leaves the file pending.
        """
        async with entry.lock:
            if entry.committed:
                assert entry.digest is not None
                return entry.digest
            with self._busy():
                return await self._finalize(entry)

    async def _finalize(self, entry: FileEntry) -> Digest:
        assert entry.spool is not None
        spool = entry.spool
        function = entry.function
        if entry.hasher is not None and entry.hasher.size == entry.size:
            digest = entry.hasher.digest()
        else:
            digest = await trio.to_thread.run_sync(digest_file, spool, function)
        if entry.expected is not None and digest != entry.expected:
            raise UploadError(
                errno.EIO, f"content is {digest}, not {entry.expected}: nothing was stored"
            )
        client = self.clients[entry.instance]
        started = time.monotonic()
        if await client.find_missing([digest]):
            if digest.size <= (await client.capabilities()).batch_budget():
                data = await trio.to_thread.run_sync(spool.read_bytes)
                if Digest.of_bytes(data, function) != digest:
                    raise UploadError(errno.EIO, f"{entry.path()} changed during its upload")
                await client.batch_update([(digest, data)])
            else:
                await client.write(digest, spool)
            log.info(
                "uploaded %s as %s in %.2fs",
                entry.path() or "a direct write",
                digest,
                time.monotonic() - started,
            )
        else:
            log.info("%s: the server already has %s", entry.path() or "direct write", digest)
        entry.digest = digest
        self.spool.discard(entry)
        return digest

    async def directory_digest(self, directory: DirEntry, instance: str) -> Digest:
        """The digest of a directory as a REAPI Directory, uploading what it refers to.

        Files still open for writing make it EBUSY.
        """
        if directory.digest is not None:
            return directory.digest
        message = re_pb2.Directory()
        for name in sorted(directory.children):
            child = directory.children[name]
            if isinstance(child, FileEntry):
                if child.writers:
                    raise UploadError(errno.EBUSY, f"{child.path()} is still open for writing")
                digest = await self.finalize(child)
                message.files.add(
                    name=name, digest=digest.to_proto(), is_executable=bool(child.mode & 0o111)
                )
            elif isinstance(child, DirEntry):
                digest = await self.directory_digest(child, instance)
                message.directories.add(name=name, digest=digest.to_proto())
            elif isinstance(child, SymlinkEntry):
                message.symlinks.add(name=name, target=child.target)
        digest = await self.clients[instance].upload_bytes(message.SerializeToString())
        directory.digest = digest
        return digest

    # -- recovery ---------------------------------------------------------------------------

    def recover(self) -> list[FileEntry]:
        """Put files a previous mount left in the spool back in place; return them."""
        recovered = []
        for data, meta in self.spool.leftovers():
            instance = str(meta.get("instance", ""))
            if instance not in self.roots:
                log.warning("spool: %s belongs to instance %r, not mounted", data.name, instance)
                continue
            expected = None
            if meta.get("expected"):
                expected = Digest.parse(
                    str(meta["expected"]), DigestFunction.from_name(str(meta["function"]))
                )
            parent: DirEntry | None = None
            name = data.name
            if expected is None:
                parent = self.roots[instance]
                *dirs, name = str(meta["path"]).split("/")
                for part in dirs:
                    child = parent.children.get(part)
                    if not isinstance(child, DirEntry):
                        child = DirEntry(name=part, parent=parent)
                        parent.children[part] = child
                    parent = child
            mode = meta.get("mode", 0o644)
            entry = FileEntry(
                name=name,
                parent=parent,
                instance=instance,
                mode=mode if isinstance(mode, int) else 0o644,
                expected=expected,
                spool=data,
                size=data.stat().st_size,
                hasher=None,
            )
            if parent is not None:
                parent.children[name] = entry
            recovered.append(entry)
        return recovered
