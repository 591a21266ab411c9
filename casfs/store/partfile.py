"""One resumable upload: its ``uploads/<name>.part`` file, the running hash of its bytes,
and its commit into the blob store once verified.

Bytes are appended in the order they arrive; a write at offset 0 restarts the session,
any other offset must equal ``committed_size``. Whole aligned blocks go to the disk around
the page cache (``casfs.directio``): a ``.part`` file is read again only to be hashed
after a restart. The table of sessions, their limits and reclaiming are in
``casfs.store.partials``.

Concurrency notes: a session is used only by the one stream that holds it
(``UploadSessions.open`` holds ``lock``). The running hash is kept in memory between
streams; a session found only on disk (after a restart) is rehashed once on first use;
while a stream runs, a ``PartHasher`` of the session feeds it, and it is the session's again
once that thread has been joined (``detach``, ``finish``). On ``finish`` the bytes are
verified and renamed into the blob store, so a partial upload never becomes visible as a
blob. A failure (``OffsetMismatch``, ``SizeMismatch``, ``HashMismatch``, ``StoreFull``)
leaves the session as it was before the failing call, or discards it when its bytes can
never make the blob.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from casfs.compression import CompressionError, zstd_reader
from casfs.digest import Digest, DigestBuilder
from casfs.directio import DirectWriter
from casfs.resource import Compressor
from casfs.store.blobstore import disk_errors
from casfs.store.errors import (
    HashMismatch,
    OffsetMismatch,
    SizeMismatch,
    StoreFull,
    Unsupported,
)
from casfs.store.parthasher import PartHasher

if TYPE_CHECKING:
    from casfs.store.partials import UploadSessions

_COPY_CHUNK = 1 << 20
_HASH_THREAD_BYTES = 256 << 10  # a stream's first message this large starts a PartHasher


def check_supported(digest: Digest, compressor: Compressor) -> None:
    """Raise ``Unsupported`` for an upload the store cannot verify."""
    if compressor not in (Compressor.IDENTITY, Compressor.ZSTD):
        raise Unsupported(f"uploads compressed with {compressor.name_lower} are not supported")
    if not digest.function.hashable:
        raise Unsupported(f"{digest.function.name_lower} digests are not supported")


class UploadSession:
    """One resumable upload. Use only while holding it through ``UploadSessions.open``."""

    def __init__(
        self,
        owner: UploadSessions,
        name: str,
        path: Path,
        digest: Digest,
        compressor: Compressor,
    ) -> None:
        check_supported(digest, compressor)
        self.owner = owner
        self.store = owner.store
        self.name = name
        self.path = path
        self.digest = digest
        self.compressor = compressor
        self.lock = threading.Lock()
        self.complete = False
        self._fd: int | None = None
        self._writer: DirectWriter | None = None
        self._hasher: DigestBuilder | None = None  # None: rehash the file before appending
        self._hashing: PartHasher | None = None  # feeds _hasher while a stream runs
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
            self.discard()
        if self.committed + len(data) > self._max_bytes():
            raise SizeMismatch(
                f"{self.digest}: upload exceeds the size, at {self.committed + len(data)} bytes"
            )
        self.owner.grow(self.path, len(data))  # StoreFull past the limits: nothing written
        try:
            if self._writer is None:
                self.attach()
            assert self._writer is not None
            if self._hasher is None:
                self._hasher = self._rehash()
            with disk_errors(f"uploading {self.digest}"):
                self._writer.pwrite(data, self.committed)
        except StoreFull:
            # The client gives up on a full disk (RESOURCE_EXHAUSTED is final): what the
            # session holds would only keep the disk full, so it goes.
            self.discard()
            raise
        except BaseException:
            self.owner.resync(self.path)
            raise
        if self.compressor is Compressor.IDENTITY:
            if self._hashing is None and len(data) >= _HASH_THREAD_BYTES:
                self._hashing = PartHasher(self._hasher)
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
        self.owner.forget(self.path)
        self.complete = True

    def discard(self) -> None:
        """Drop the bytes held; the session starts again from 0."""
        self.detach()
        self.path.unlink(missing_ok=True)
        self.owner.forget(self.path)
        self.committed = 0
        self._hasher = None

    def take_over(self, other: UploadSession) -> None:
        """Continue from the bytes of ``other`` (same digest and compressor, held by the
        caller, no stream on it): its ``.part`` becomes this session's."""
        other.detach()
        os.replace(other.path, self.path)
        self.owner.moved(other.path, self.path)
        self.committed, self._hasher = other.committed, other._hasher
        other.committed, other._hasher = 0, None

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
