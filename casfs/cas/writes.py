"""``CasClient``'s uploads: the one policy of batch or stream (``store_file``), resumable
ByteStream Writes, and whole files or small in-memory blobs uploaded unless present.

A Write broken by a transient error resumes at the server's ``committed_size``
(``cas/retry.py`` paces the attempts); cancellation cancels the call and the server keeps
what it has. Files are read in grpc's request thread, one chunk at a time.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from casfs._proto import bytestream_pb2
from casfs.cas.calls import await_future
from casfs.cas.errors import (
    Aborted,
    ContentChanged,
    DataLoss,
    FailedPrecondition,
    NotFound,
    Unimplemented,
)
from casfs.cas.reads import ReadCalls
from casfs.cas.retry import with_retries
from casfs.compression import compressor as stream_compressor
from casfs.digest import Digest, DigestBuilder, DigestFunction, digest_file
from casfs.directio import DirectReader
from casfs.resource import BlobName, Compressor

log = logging.getLogger("casfs.cas")
ProgressCallback = Callable[[int], None]  # told the bytes done so far


class WriteCalls(ReadCalls):
    """ByteStream Write and the uploads built on it and on BatchUpdateBlobs."""

    async def write(
        self,
        digest: Digest,
        path: os.PathLike[str] | str,
        progress: ProgressCallback | None = None,
        *,
        cold: bool = False,
    ) -> None:
        """Upload the file at ``path`` as ``digest`` by ByteStream Write, resumably.
        ``progress`` is told the bytes of the file sent so far (from grpc's thread).
        ``cold`` says the file is not in the page cache (the mount's spool), so it is read
        without bringing it in.

        The file is sent in ``chunk_size`` requests. After a transient failure the next
        attempt asks QueryWriteStatus for ``committed_size`` and resumes there; a server
        without QueryWriteStatus (UNIMPLEMENTED), an unknown session or a compressed upload
        restarts from 0. A server that ends the stream early because it already has the blob
        counts as success. A Write answered UNIMPLEMENTED is sent again from offset 0 under
        a new upload name, once per attempt: a server that cannot resume answers so to a
        stream that reached it cut short, before finish_write; a second UNIMPLEMENTED in a
        row is final (the server takes no writes). Cancellation cancels the call; the
        server keeps what it has.
        """
        if digest.size == 0:
            return
        actual = os.stat(path).st_size
        if actual != digest.size:
            raise ValueError(f"{path} has {actual} bytes, the digest says {digest.size}")
        compressor = await self._wire_compressor(digest, (Compressor.ZSTD,))

        def new_name() -> str:
            return BlobName(self.instance, digest, compressor, str(uuid.uuid4())).write_name()

        name = new_name()
        what = f"Write {name}"
        started = False

        async def send(offset: int) -> None:
            if compressor is Compressor.IDENTITY:
                requests = _plain_requests(
                    name, path, offset, digest.size, self.config.chunk_size, progress, cold=cold
                )
            else:
                requests = _zstd_requests(name, path, self.config.chunk_size, progress)
            future = self._bytestream.Write.future(
                requests,
                timeout=self._stream_timeout(digest.size - offset),
                metadata=self._metadata,
            )
            try:
                response = await await_future(future, what)
            except FailedPrecondition as error:
                # The server holds other bytes than we thought (a late message of an
                # earlier stream): ask it again rather than give up.
                raise Aborted(str(error), code=error.code) from None
            committed = response.committed_size
            if compressor is Compressor.IDENTITY and committed != digest.size:
                raise DataLoss(f"{what}: server committed {committed} of {digest.size} bytes")

        async def attempt() -> None:
            nonlocal started, name
            offset = 0
            if started and compressor is Compressor.IDENTITY:
                offset, complete = await self._write_status(name)
                if complete:
                    return
                if offset > 0:
                    self.resumed_writes += 1
                    log.info("%s: resuming at offset %d", what, offset)
            started = True
            try:
                await send(offset)
            except Unimplemented as error:
                name = new_name()
                log.info("%s; restarting from offset 0 as %s", error, name)
                await send(0)

        await with_retries(attempt, self.config.retry, what)

    async def _write_status(self, name: str) -> tuple[int, bool]:
        """``(committed_size, complete)`` of an upload; ``(0, False)`` where unknown."""
        request = bytestream_pb2.QueryWriteStatusRequest(resource_name=name)
        try:
            response = await self._unary(
                self._bytestream.QueryWriteStatus, request, f"QueryWriteStatus {name}"
            )
        except (Unimplemented, NotFound):
            return 0, False
        return int(response.committed_size), bool(response.complete)

    async def upload_file(
        self,
        path: os.PathLike[str] | str,
        function: DigestFunction = DigestFunction.SHA256,
        progress: Callable[[str, int], None] | None = None,
    ) -> Digest:
        """Hash a file, then upload it unless the server has it; returns its digest.

        Small files go by BatchUpdateBlobs, larger ones by a resumable ByteStream Write.
        ``progress("hashing" or "uploading", bytes so far)`` reports on a large file.
        """
        hashed = (lambda done: progress("hashing", done)) if progress else None
        digest = await trio.to_thread.run_sync(digest_file, path, function, 1 << 20, hashed)
        if not await self.find_missing([digest]):
            return digest
        sent = (lambda done: progress("uploading", done)) if progress else None
        await self.store_file(digest, path, sent)
        return digest

    async def store_file(
        self,
        digest: Digest,
        path: os.PathLike[str] | str,
        progress: ProgressCallback | None = None,
        *,
        cold: bool = False,
    ) -> None:
        """Upload the file at ``path``, whose digest is known, the one way casfs decides:
        a blob that fits a batch (``fits_batch``) is read whole and sent by
        BatchUpdateBlobs, a larger one by a resumable ByteStream ``write`` (``progress``
        and ``cold`` as there). It does not ask whether the server has it.

        Raises ``ContentChanged`` if a small file no longer matches ``digest`` (nothing
        was sent), and the ``CasError`` of the call otherwise.
        """
        if await self.fits_batch(digest):
            data = await trio.to_thread.run_sync(Path(path).read_bytes)
            if Digest.of_bytes(data, digest.function) != digest:
                raise ContentChanged(f"{path} changed while it was being uploaded")
            await self.batch_update([(digest, data)])
        else:
            await self.write(digest, path, progress, cold=cold)

    async def upload_bytes(
        self, data: bytes, function: DigestFunction = DigestFunction.SHA256
    ) -> Digest:
        """Upload a small in-memory blob (a Directory message, a test fixture)."""
        builder = DigestBuilder(function)
        builder.update(data)
        digest = builder.digest()
        if not await self.fits_batch(digest):
            raise ValueError(f"{digest} is too large for a batch; write it from a file")
        if await self.find_missing([digest]):
            await self.batch_update([(digest, data)])
        return digest


def _plain_requests(
    name: str,
    path: os.PathLike[str] | str,
    offset: int,
    size: int,
    chunk_size: int,
    progress: ProgressCallback | None = None,
    *,
    cold: bool = False,
) -> Iterator[bytestream_pb2.WriteRequest]:
    """WriteRequests for ``path[offset:size]``; runs in grpc's request-consuming thread.
    ``cold``: the file is not in the page cache, so it is read around it (``directio``)."""
    reader = DirectReader(path, direct=cold)
    pieces = reader.chunks(offset, size, chunk_size)
    try:
        position = offset
        first = True
        while True:
            chunk = next(pieces, b"") if position < size else b""
            if not chunk and position < size:
                raise OSError(f"{path} shrank to {position} bytes during the upload")
            finish = position + len(chunk) >= size
            yield bytestream_pb2.WriteRequest(
                resource_name=name if first else "",
                write_offset=position,
                data=chunk,
                finish_write=finish,
            )
            first = False
            position += len(chunk)
            if progress is not None:
                progress(position)
            if finish:
                return
    finally:
        pieces.close()  # first: its thread may still be reading
        reader.close()


def _zstd_requests(
    name: str,
    path: os.PathLike[str] | str,
    chunk_size: int,
    progress: ProgressCallback | None = None,
) -> Iterator[bytestream_pb2.WriteRequest]:
    """WriteRequests carrying ``path`` zstd-compressed; offsets count compressed bytes."""
    compress = stream_compressor(Compressor.ZSTD)
    with open(path, "rb") as file:
        position = 0
        first = True
        while chunk := file.read(chunk_size):
            if progress is not None:
                progress(file.tell())
            data = compress(chunk, False)
            if not data:
                continue
            yield bytestream_pb2.WriteRequest(
                resource_name=name if first else "", write_offset=position, data=data
            )
            first = False
            position += len(data)
        yield bytestream_pb2.WriteRequest(
            resource_name=name if first else "",
            write_offset=position,
            data=compress(b"", True),
            finish_write=True,
        )
