"""Resumable uploads: ByteStream Write sessions persisted as ``uploads/<key>.part``.

A session is named by its write resource name (instance, upload id, digest, compressor),
so a client that reconnects, even to a restarted server, finds the bytes it already sent:
``committed_size`` is the length of the ``.part`` file. Bytes are appended in the order
they arrive; a write at offset 0 restarts the session, any other offset must equal
``committed_size``. Whole aligned blocks go to the disk around the page cache
(``casfs.directio``): a ``.part`` file is read again only to be hashed after a restart.

Concurrency notes: one stream at a time writes a session (``UploadSessions.open`` holds
the session's lock for the whole stream and waits up to ``busy_timeout`` for a previous
stream, e.g. one whose client vanished, to let go). The running hash is kept in memory
between streams; a session found only on disk (after a restart) is rehashed once on first
use; while a stream runs, a ``HashThread`` of the session feeds it, and it is the
session's again once that thread has been joined (``detach``, ``finish``). On ``finish``
the bytes are verified and renamed into the blob store, so a partial upload never becomes
visible as a blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from casfs.compression import CompressionError, zstd_reader
from casfs.digest import Digest, DigestBuilder
from casfs.directio import DirectWriter
from casfs.resource import Compressor
from casfs.store.blobstore import BlobStore, disk_errors
from casfs.store.errors import (
    BlobNotFound,
    HashMismatch,
    OffsetMismatch,
    SizeMismatch,
    StoreFull,
    Unsupported,
    UploadBusy,
)
from casfs.store.hashthread import HashThread

log = logging.getLogger("casfs.store")

# Partial uploads nobody came back for are removed at start-up after this long.
STALE_AFTER = 7 * 24 * 3600
_COPY_CHUNK = 1 << 20
_HASH_THREAD_BYTES = 256 << 10  # a stream's first message this large starts a HashThread


class UploadSession:
    """One resumable upload. Use only while holding it through ``UploadSessions.open``."""

    def __init__(self, store: BlobStore, path: Path, digest: Digest, compressor: Compressor):
        if compressor not in (Compressor.IDENTITY, Compressor.ZSTD):
            raise Unsupported(f"uploads compressed with {compressor.name_lower} are not supported")
        if not digest.function.hashable:
            raise Unsupported(f"{digest.function.name_lower} digests are not supported")
        self.store = store
        self.path = path
        self.digest = digest
        self.compressor = compressor
        self.lock = threading.Lock()
        self.complete = False
        self._fd: int | None = None
        self._writer: DirectWriter | None = None
        self._hasher: DigestBuilder | None = None  # None: rehash the file before appending
        self._hashing: HashThread | None = None  # feeds _hasher while a stream runs
        self.committed = path.stat().st_size if path.exists() else 0

    def _max_bytes(self) -> int:
        """The most bytes an upload may send: the size, or zstd's worst case above it."""
        if self.compressor is Compressor.IDENTITY:
            return self.digest.size
        return self.digest.size + self.digest.size // 64 + (64 << 10)

    def attach(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._writer = DirectWriter(self.path, fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def detach(self) -> None:
        self._hashed()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _rehash(self) -> DigestBuilder:
        builder = DigestBuilder(self.digest.function)
        if self.compressor is Compressor.IDENTITY:
            with open(self.path, "rb") as file:
                while chunk := file.read(_COPY_CHUNK):
                    builder.update(chunk)
        return builder

    def write(self, offset: int, data: bytes) -> None:
        """Append ``data``, which must start at ``offset``.

        ``offset`` 0 restarts the upload; any other offset must be ``committed``.
        Raises ``OffsetMismatch`` or, for an uncompressed upload longer than the digest
        says, ``SizeMismatch``.
        """
        if offset != self.committed:
            if offset != 0:
                raise OffsetMismatch(
                    f"write at offset {offset}, but {self.committed} bytes are committed",
                    self.committed,
                )
            self.detach()
            self.path.unlink(missing_ok=True)
            self.committed = 0
            self._hasher = None
        if self.committed + len(data) > self._max_bytes():
            raise SizeMismatch(
                f"{self.digest}: upload exceeds the size, at {self.committed + len(data)} bytes"
            )
        if self._writer is None:
            self.attach()
            assert self._writer is not None
        if self._hasher is None:
            self._hasher = self._rehash()
        try:
            with disk_errors(f"uploading {self.digest}"):
                self._writer.pwrite(data, self.committed)
        except StoreFull:
            # The client gives up on a full disk (RESOURCE_EXHAUSTED is final): what the
            # session holds would only keep the disk full, so it goes.
            self.discard()
            raise
        if self.compressor is Compressor.IDENTITY:
            if self._hashing is None and len(data) >= _HASH_THREAD_BYTES:
                self._hashing = HashThread(self._hasher)
            if self._hashing is not None:
                self._hashing.update(data)
            else:
                self._hasher.update(data)
        self.committed += len(data)

    def _hashed(self) -> None:
        """Wait until the hash thread has hashed every byte written, and end it."""
        if self._hashing is not None:
            self._hashing.close()
            self._hashing = None

    def finish(self) -> None:
        """Verify the upload and commit it to the store; the ``.part`` file goes away.

        A size or hash mismatch, or a full disk, raises and discards the upload (nothing
        is stored).
        """
        if self._writer is None:  # an empty stream with finish_write, or a resumed one
            self.attach()
        try:
            if self.compressor is Compressor.IDENTITY:
                self._hashed()
                if self._hasher is None:
                    self._hasher = self._rehash()
                if self.committed != self.digest.size:
                    raise SizeMismatch(f"{self.digest}: upload finished at {self.committed} bytes")
                if self._hasher.digest() != self.digest:
                    raise HashMismatch(f"{self.digest}: the uploaded data hashes to another digest")
                self.detach()
                self.store.commit(self.digest, self.path, verified=True)
            else:
                self.detach()
                self._commit_decompressed()
        except (HashMismatch, SizeMismatch, StoreFull):
            self.discard()
            raise
        self.complete = True

    def discard(self) -> None:
        """Drop the bytes held; the session starts again from 0."""
        self.detach()
        self.path.unlink(missing_ok=True)
        self.committed = 0
        self._hasher = None

    def _commit_decompressed(self) -> None:
        """Decompress a zstd upload into a temporary file, hashing as it goes, and commit."""
        out, tmp = self.store.temp_file()
        builder = DigestBuilder(self.digest.function)
        try:
            with out, open(self.path, "rb") as source, disk_errors(f"uploading {self.digest}"):
                reader = zstd_reader(source)
                while chunk := reader.read(_COPY_CHUNK):
                    builder.update(chunk)
                    if builder.size > self.digest.size:
                        raise SizeMismatch(f"{self.digest}: decompresses to more bytes")
                    out.write(chunk)
        except CompressionError as error:
            tmp.unlink(missing_ok=True)
            raise HashMismatch(f"{self.digest}: the upload is not valid zstd: {error}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if builder.digest() != self.digest:
            tmp.unlink(missing_ok=True)
            raise HashMismatch(f"{self.digest}: the uploaded data hashes to another digest")
        self.store.commit(self.digest, tmp, verified=True)
        self.path.unlink(missing_ok=True)


class UploadSessions:
    """The upload sessions of one store, by write resource name."""

    def __init__(self, store: BlobStore, *, busy_timeout: float = 30.0) -> None:
        self.store = store
        self.busy_timeout = busy_timeout
        self._dir = store.root / "uploads"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._sessions: dict[str, UploadSession] = {}
        self._remove_stale()

    def _remove_stale(self) -> None:
        cutoff = time.time() - STALE_AFTER
        for part in self._dir.glob("*.part"):
            if part.stat().st_mtime < cutoff:
                log.info("removing abandoned upload %s", part.name)
                part.unlink(missing_ok=True)

    def _path(self, resource_name: str) -> Path:
        key = hashlib.sha256(resource_name.encode("utf-8", "surrogatepass")).hexdigest()
        return self._dir / f"{key}.part"

    def _session(self, resource_name: str, digest: Digest, compressor: Compressor) -> UploadSession:
        with self._lock:
            session = self._sessions.get(resource_name)
            if session is None:
                session = UploadSession(self.store, self._path(resource_name), digest, compressor)
                self._sessions[resource_name] = session
            return session

    @contextlib.contextmanager
    def open(
        self, resource_name: str, digest: Digest, compressor: Compressor
    ) -> Iterator[UploadSession]:
        """Hold the session for one Write stream. Raises ``UploadBusy`` after a timeout."""
        session = self._session(resource_name, digest, compressor)
        if not session.lock.acquire(timeout=self.busy_timeout):
            raise UploadBusy(f"another stream is writing {resource_name}")
        try:
            yield session
        finally:
            session.detach()
            if session.complete:
                with self._lock:
                    self._sessions.pop(resource_name, None)
            session.lock.release()

    def status(self, resource_name: str, digest: Digest) -> tuple[int, bool]:
        """``(committed_size, complete)`` for QueryWriteStatus. Raises ``BlobNotFound``."""
        with self._lock:
            session = self._sessions.get(resource_name)
        if session is not None:
            return session.committed, session.complete
        if self.store.contains(digest):
            return digest.size, True
        path = self._path(resource_name)
        if path.exists():
            return path.stat().st_size, False
        raise BlobNotFound(f"no upload session {resource_name}")
