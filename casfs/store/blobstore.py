"""The on-disk blob store: one file per blob, named by its digest.

Layout under the store's root::

    cas/<function>/<hh>/<hash>    committed blobs; the file size is the digest's size
    tmp/                          files being written; emptied at start-up
    uploads/<key>.part            resumable ByteStream uploads (see ``uploads.py``)
    ac/                           action results (see ``actioncache.py``)

Invariants (the crash-safety argument):

- A file appears under ``cas/`` only by ``rename`` of a complete, fsynced temporary file
  whose hash was verified, followed by an fsync of the directory. So after a crash a blob
  is either absent or whole; no partial blob is ever visible.
- Two uploads of one blob race harmlessly: each verifies its own temporary file and the
  second rename replaces identical bytes (or finds the blob there and drops its copy).
- Size accounting and LRU order live in memory (rebuilt by a scan at start-up) under one
  lock; renames into ``cas/`` and evictions happen under that lock, hashing and fsync
  outside it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from casfs.digest import Digest, DigestError, DigestFunction, digest_file
from casfs.store.errors import BlobNotFound, HashMismatch, SizeMismatch, StoreFull, Unsupported

log = logging.getLogger("casfs.store")

_Key = tuple[DigestFunction, str]


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turn a full disk or exhausted quota into ``StoreFull``; other OSErrors pass."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"{what}: {os.strerror(error.errno)}") from error
        raise


def _remove_dead_tmp_dirs(tmp: Path) -> None:
    """Remove the temporary files of store processes that are gone (crashed or ended).

    Each process writes under ``tmp/<pid>/``, so two processes may share a store (a
    ``casfs serve`` and a mount's embedded server): neither deletes the other's files.
    """
    for entry in tmp.iterdir():
        try:
            pid = int(entry.name)
            os.kill(pid, 0)
        except ValueError:
            pass  # not ours
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's
        else:
            if pid == os.getpid():  # a previous process that had our pid
                shutil.rmtree(entry, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Content-addressed blobs in a directory, optionally bounded in size with LRU eviction.

    Thread-safe: gRPC servicers call it from many worker threads.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_size: int | None = None,
        evict: bool = False,
        fsync: bool = True,
    ) -> None:
        self.root = root
        self.max_size = max_size
        self.evict = evict
        self.fsync = fsync
        self._blobs = root / "cas"
        for directory in (root, self._blobs, root / "tmp"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_dead_tmp_dirs(root / "tmp")
        self.tmp_dir = root / "tmp" / str(os.getpid())
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._lru: OrderedDict[_Key, int] = OrderedDict()
        self._total = 0
        self._scan()

    def _scan(self) -> None:
        """Rebuild the size index and LRU order (oldest access first) from the disk."""
        found: list[tuple[float, _Key, int]] = []
        for function_dir in self._blobs.iterdir():
            try:
                function = DigestFunction.from_name(function_dir.name)
            except DigestError:
                continue
            for entry in function_dir.glob("*/*"):
                stat = entry.stat()
                used = max(stat.st_atime, stat.st_mtime)
                found.append((used, (function, entry.name), stat.st_size))
        for _, key, size in sorted(found, key=lambda entry: entry[0]):  # keys never compare
            self._lru[key] = size
            self._total += size
        log.info("store %s: %d blobs, %d bytes", self.root, len(self._lru), self._total)

    @property
    def total_size(self) -> int:
        """Bytes of committed blobs."""
        return self._total

    def path(self, digest: Digest) -> Path:
        """Where the blob lives (whether or not it exists)."""
        return self._blobs / digest.function.name_lower / digest.hash[:2] / digest.hash

    def contains(self, digest: Digest) -> bool:
        """Whether the blob is stored; the empty blob always is, and no other of size 0."""
        if digest.size == 0:
            return digest.is_empty
        present = self._on_disk(digest)
        if present:  # asking counts as use: REAPI wants FindMissingBlobs to extend lifetimes
            self._touch(digest)
        return present

    def _on_disk(self, digest: Digest) -> bool:
        try:
            return self.path(digest).stat().st_size == digest.size
        except FileNotFoundError:
            return False

    def _touch(self, digest: Digest) -> None:
        with self._lock:
            key = (digest.function, digest.hash)
            if key in self._lru:
                self._lru.move_to_end(key)

    def check_fits(self, size: int) -> None:
        """Refuse at once a blob that could never fit under ``max_size``."""
        if self.max_size is not None and size > self.max_size:
            raise StoreFull(f"a blob of {size} bytes exceeds --max-size {self.max_size}")

    def missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """The digests that are not stored, in the order given, without repeats."""
        return [d for d in dict.fromkeys(digests) if not self.contains(d)]

    def open(self, digest: Digest) -> BinaryIO:
        """Open a blob for reading and mark it recently used. Raises ``BlobNotFound``."""
        if digest.is_empty:
            return io.BytesIO(b"")
        try:
            file = open(self.path(digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        if os.fstat(file.fileno()).st_size != digest.size:
            file.close()
            raise BlobNotFound(f"blob {digest} not found (another size is stored)")
        self._touch(digest)
        return file

    def temp_file(self) -> tuple[BinaryIO, Path]:
        """A new private temporary file in the store's file system, for ``commit``."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        return os.fdopen(fd, "wb"), Path(name)

    def put(self, digest: Digest, data: bytes) -> None:
        """Store a blob held in memory (a batch upload), after checking it."""
        if len(data) != digest.size:
            raise SizeMismatch(f"{digest}: got {len(data)} bytes")
        if Digest.of_bytes(data, digest.function) != digest:
            raise HashMismatch(f"{digest}: the data hashes to another digest")
        if self.contains(digest):
            return
        file, path = self.temp_file()
        try:
            with disk_errors(f"storing {digest}"), file:
                file.write(data)
            self.commit(digest, path, verified=True)
        finally:
            path.unlink(missing_ok=True)

    def commit(self, digest: Digest, path: Path, *, verified: bool) -> None:
        """Move the complete file at ``path`` into place as ``digest``.

        Unless ``verified``, the file is hashed first; a mismatch raises and stores nothing.
        The file is gone from ``path`` afterwards, whether or not this succeeds.
        """
        try:
            size = path.stat().st_size
            if size != digest.size:
                raise SizeMismatch(f"{digest}: got {size} bytes")
            if not verified:
                if not digest.function.hashable:
                    raise Unsupported(f"cannot verify {digest.function.name_lower} digests")
                if digest_file(path, digest.function) != digest:
                    raise HashMismatch(f"{digest}: the data hashes to another digest")
            if self.fsync:
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            target = self.path(digest)
            self._make_parents(target)
            key = (digest.function, digest.hash)
            with self._lock:
                if key in self._lru and self._on_disk(digest):
                    self._lru.move_to_end(key)
                    return
                self._make_room(digest.size)
                os.replace(path, target)
                self._lru[key] = digest.size
                self._total += digest.size
            if self.fsync:
                fsync_dir(target.parent)
        finally:
            path.unlink(missing_ok=True)

    def _make_parents(self, target: Path) -> None:
        """Create ``cas/<fn>/<hh>/`` as needed, durably (each new directory's parent is
        fsynced, so a blob acknowledged in a new prefix survives a power loss)."""
        missing = []
        directory = target.parent
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for directory in reversed(missing):
            directory.mkdir(mode=0o700, exist_ok=True)
            if self.fsync:
                fsync_dir(directory.parent)

    def _make_room(self, size: int) -> None:
        """Evict least recently used blobs until ``size`` more bytes fit; lock held."""
        if self.max_size is None or self._total + size <= self.max_size:
            return
        if not self.evict or size > self.max_size:
            raise StoreFull(
                f"store is full: {self._total} + {size} bytes exceeds --max-size {self.max_size}"
            )
        while self._lru and self._total + size > self.max_size:
            (function, hash_), old_size = self._lru.popitem(last=False)
            self._total -= old_size
            victim = self._blobs / function.name_lower / hash_[:2] / hash_
            victim.unlink(missing_ok=True)
            log.info("evicted %s/%s/%d", function.name_lower, hash_, old_size)
