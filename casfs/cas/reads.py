"""``CasClient``'s reads: ranged ByteStream Reads (whole, or a window of blocks for a
remote that reads only those), streams resumed where they broke, verified whole-blob
streams, and BatchReadBlobs for small blobs.

A transient failure is retried (``cas/retry.py``): a ranged read from scratch, a stream
from where it stopped; a stream from offset 0 is hashed as it goes and its last chunk
withheld unless the digest matches. Cancellation cancels the call; the worker thread
blocked in grpc wakes with CANCELLED and its result is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from casfs._proto import bytestream_pb2
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.batches import BatchCalls, batches
from casfs.cas.calls import Chunk
from casfs.cas.errors import CasError, DataLoss, NotFound, Unimplemented, from_status
from casfs.cas.quirks import is_aligned
from casfs.cas.retry import RetryBudget, with_retries
from casfs.compression import CompressionError, Decompressor
from casfs.digest import Digest, DigestBuilder
from casfs.resource import BlobName, Compressor

# Whole blobs up to this size are read by BatchReadBlobs rather than ByteStream.
SMALL_READ = 64 << 10


class ReadCalls(BatchCalls):
    """ByteStream Reads and BatchReadBlobs."""

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of a blob, clamped to its end.

        One ranged ByteStream Read, retried from scratch on transient errors (a small blob
        read whole: one BatchReadBlobs, which also checks its digest). Raises
        ``NotFound`` for a missing blob and ``DataLoss`` if the server sends fewer bytes
        than the digest promises. A remote that serves whole blocks only (DATA_LOSS for a
        range that is not, or more bytes than asked) is asked again for the aligned range
        around it, which is trimmed, and is asked that way from then on
        (``RemoteQuirks.aligned_reads``).
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        length = min(length, digest.size - offset)
        if length <= 0:
            return b""
        if (
            offset == 0
            and length == digest.size <= SMALL_READ
            and digest.function.hashable
            and await self.fits_batch(digest)
        ):  # a small blob whole: a unary call, with no thread to wait in, and verified
            return (await self.batch_read([digest]))[digest]
        name = BlobName(self.instance, digest).read_name()
        what = f"Read {name} [{offset}+{length}]"
        end = offset + length

        async def attempt() -> bytes:
            start, stop = self.quirks.read_window(offset, end, digest.size)
            try:
                data = await self._read_once(digest, start, stop - start)
            except DataLoss as error:
                if not self._refused_unaligned(error, start, stop, digest.size):
                    raise
                raise _Realign() from None
            if len(data) > stop - start:
                self._overshot(start, stop, digest.size, len(data))
            if len(data) < end - start:
                raise DataLoss(f"{what}: server sent {len(data) - (offset - start)} bytes")
            if start == offset and len(data) == length:
                return data
            return data[offset - start : end - start]

        try:
            return await with_retries(attempt, self.config.retry, what)
        except _Realign:  # learned just now: the next attempt asks for whole blocks
            return await with_retries(attempt, self.config.retry, what)

    def _refused_unaligned(self, error: DataLoss, offset: int, end: int, size: int) -> bool:
        """Whether the server's DATA_LOSS answers a read that was not in whole blocks; if
        so, the remote is known from now on to need them."""
        if error.code is not grpc.StatusCode.DATA_LOSS or is_aligned(offset, end, size):
            return False
        self.quirks.learn_aligned_reads(error.message)
        return True

    def _overshot(self, offset: int, end: int, size: int, got: int) -> None:
        """The server sent ``got`` bytes for ``[offset, end)``: the surplus is trimmed, and
        a read that was not in whole blocks is not asked that way again."""
        if not is_aligned(offset, end, size):
            self.quirks.learn_aligned_reads(f"sent {got} bytes for a read of {end - offset}")

    async def _read_once(self, digest: Digest, offset: int, limit: int) -> bytes:
        """One ranged Read as asked, not clamped to the blob's end and not retried."""
        name = BlobName(self.instance, digest).read_name()
        request = bytestream_pb2.ReadRequest(
            resource_name=name, read_offset=offset, read_limit=limit
        )
        call = self._raw_read(request, timeout=self._stream_timeout(limit), metadata=self._metadata)
        return await self._in_thread(
            lambda: b"".join(read_response_data(m) for m in call),
            call,
            f"Read {name} [{offset}+{limit}]",
        )

    async def stream(self, digest: Digest, offset: int = 0) -> AsyncIterator[Chunk]:
        """Yield the blob from ``offset`` to its end in the chunks the server sends.

        A stream broken by a transient error resumes where it stopped. zstd on the wire is
        used when the config asks for compression and the server advertises it. A stream
        from offset 0 is hashed on the way: if the bytes do not match the digest, the last
        chunk is withheld and ``DataLoss`` raised, so a consumer never gets a whole wrong
        blob without an error.
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        hashable = offset == 0 and digest.function.hashable
        verify = DigestBuilder(digest.function) if hashable else None
        pending: Chunk = b""
        async for chunk in self._stream(digest, offset, digest.size):
            if verify is None:
                yield chunk
                continue
            verify.update(chunk)
            if pending:
                yield pending
            pending = chunk
        if verify is not None:
            if verify.digest() != digest:
                raise DataLoss(f"Read {digest}: the data does not match the digest")
            if pending:
                yield pending

    async def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[Chunk]:
        """Yield bytes ``[offset, offset + length)`` of a blob (clamped to its end) as the
        server sends them: one ranged, streaming Read instead of one Read per piece, resumed
        where it broke after a transient error. Not verified (it is part of a blob)."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        async for chunk in self._stream(digest, offset, min(digest.size, offset + length)):
            yield chunk

    async def _stream(self, digest: Digest, offset: int, end: int) -> AsyncIterator[Chunk]:
        position = offset
        compressor = Compressor.IDENTITY
        if end == digest.size:  # compressed reads take no read_limit (REAPI)
            compressor = await self._wire_compressor(digest, (Compressor.ZSTD, Compressor.DEFLATE))
        name = BlobName(self.instance, digest, compressor).read_name()
        what = f"Read {name}"
        budget = RetryBudget(self.config.retry, what)
        while position < end:
            try:
                async for chunk in self._read_stream(name, position, end, digest.size, compressor):
                    position += len(chunk)
                    yield chunk
                    budget.reset()  # progress earns a fresh budget
            except _Realign:  # learned just now: ask again, in whole blocks
                continue
            except CasError as error:
                await budget.back_off(error, f" at offset {position}", "resuming")
                continue
            if position < end:
                raise DataLoss(f"{what}: stream ended at {position}, short of {end}")

    async def _read_stream(
        self, name: str, offset: int, end: int, size: int, compressor: Compressor
    ) -> AsyncIterator[Chunk]:
        """Bytes ``[offset, end)`` as they arrive, from one Read call. A remote that reads
        in whole blocks is asked for the aligned window around them; whatever the server
        sends outside ``[offset, end)`` is dropped. Raises ``_Realign`` when the server
        refuses a read for not being in whole blocks (and remembers that it needs them)."""
        start, stop, limit = offset, end, 0
        if compressor is Compressor.IDENTITY:
            start, stop = self.quirks.read_window(offset, end, size)
            limit = stop - start
        request = bytestream_pb2.ReadRequest(
            resource_name=name, read_offset=start, read_limit=limit
        )
        call = self._raw_read(
            request, timeout=self._stream_timeout(stop - start), metadata=self._metadata
        )
        decompress = _decompressor(compressor, end - offset)
        responses = iter(call)
        position = start  # of the next byte the server sends
        try:
            while position < end:
                try:
                    response = await self._in_thread(
                        lambda: next(responses, None), call, f"Read {name}"
                    )
                except DataLoss as error:
                    if not self._refused_unaligned(error, start, stop, size):
                        raise
                    raise _Realign() from None
                final = response is None
                data = decompress(b"" if response is None else read_response_data(response), final)
                if position + len(data) > stop:
                    self._overshot(start, stop, size, position + len(data) - start)
                keep_from, keep_to = max(0, offset - position), min(len(data), end - position)
                position += len(data)
                if keep_to > keep_from:
                    whole = keep_from == 0 and keep_to == len(data)
                    yield data if whole else memoryview(data)[keep_from:keep_to]
                if final:
                    return
        finally:
            call.cancel()

    async def read_blob(self, digest: Digest) -> bytes:
        """A whole blob in memory: for small blobs (Directory messages, tests)."""
        if await self.fits_batch(digest):
            return (await self.batch_read([digest]))[digest]
        return b"".join([chunk async for chunk in self.stream(digest)])

    async def batch_read(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        """Small blobs by BatchReadBlobs, in batches under the message limit.

        Responses are matched by digest, not by order. A blob too large for a batch is read
        with ByteStream instead. Raises the error of the first blob that failed.
        """
        budget = (await self.capabilities()).batch_budget()
        unique = list(dict.fromkeys(digests))
        result: dict[Digest, bytes] = {d: b"" for d in unique if d.is_empty}
        small = [d for d in unique if not d.is_empty and d.size <= budget]
        for digest in unique:
            if digest.size > budget:
                result[digest] = await self.read_range(digest, 0, digest.size)
        for batch in batches(small, budget):
            function = batch[0].function
            request = re_pb2.BatchReadBlobsRequest(
                instance_name=self.instance,
                digests=[d.to_proto() for d in batch],
                digest_function=function.name,
            )
            response = await self._retrying_unary(
                self._cas.BatchReadBlobs, request, f"BatchReadBlobs ({len(batch)})"
            )
            wanted = set(batch)
            for item in response.responses:
                digest = Digest.from_proto(item.digest, function)
                if digest not in wanted:
                    continue
                error = from_status(item.status.code, item.status.message, f"read {digest}")
                if error is not None:
                    raise error
                undo = _decompressor(Compressor(item.compressor), digest.size)
                data = bytes(undo(item.data, True))
                if Digest.of_bytes(data, function) != digest:
                    raise DataLoss(f"BatchReadBlobs: {digest} arrived with other content")
                result[digest] = data
            for digest in batch:
                if digest not in result:
                    raise NotFound(f"BatchReadBlobs: no answer for {digest}")
        return result


class _Realign(Exception):
    """A read was refused for not being in whole blocks; the remote's quirks now say so,
    and the next attempt asks for whole blocks. Never leaves this module."""


_DATA_TAG = 0x52  # ReadResponse.data: field 10, length-delimited


def read_response_data(message: bytes) -> Chunk:
    """The ``data`` of a serialized ReadResponse.

    A ReadResponse holds only ``data`` (field 10): a tag byte, a varint length, the bytes.
    Anything else (fields a newer server adds) goes through the protobuf parser.
    """
    if message and message[0] == _DATA_TAG:
        length, shift, position = 0, 0, 1
        while position < len(message) and position < 11:
            byte = message[position]
            length |= (byte & 0x7F) << shift
            position += 1
            if not byte & 0x80:
                if position + length == len(message):
                    return memoryview(message)[position:]
                break
            shift += 7
    if not message:
        return b""
    return bytestream_pb2.ReadResponse.FromString(message).data


def _decompressor(compressor: Compressor, limit: int) -> Callable[[Chunk, bool], Chunk]:
    """A function ``(chunk, final) -> bytes`` undoing the wire compression, which yields
    at most ``limit`` bytes in all: more, or invalid data, is ``DataLoss``."""
    if compressor is Compressor.IDENTITY:
        return lambda data, final: data
    try:
        decompressor = Decompressor(compressor, limit)
    except CompressionError as error:
        raise Unimplemented(str(error)) from None

    def undo(data: Chunk, final: bool) -> Chunk:
        try:
            out = decompressor.decompress(bytes(data)) if data else b""
            return out + decompressor.flush() if final else out
        except CompressionError as error:
            raise DataLoss(f"the server sent bad compressed data: {error}") from None

    return undo
