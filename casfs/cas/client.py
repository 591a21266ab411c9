"""An async CAS client for trio, over blocking grpcio.

Concurrency notes (the invariants the rest of casfs relies on):

- Unary calls never block a thread: they are started with ``.future()`` and the trio task
  sleeps until grpc's done-callback wakes it through the trio token. Streaming calls iterate
  a blocking grpc iterator, so each ``next()`` runs in a worker thread taken from one
  ``CapacityLimiter`` per client: at most ``max_concurrent_streams`` threads block in grpc.
- Cancelling the trio task cancels the grpc call (``call.cancel()`` / ``future.cancel()``);
  an abandoned worker thread then wakes with CANCELLED and its result is dropped.
- Every call has a deadline: ``rpc_timeout`` for unary calls, plus the time to move the
  bytes at ``min_stream_rate`` for streams.
- Errors leave this module only as ``casfs.cas.errors.CasError`` subclasses (the first
  border); ``grpc.RpcError`` never escapes.
- The client holds no blob in memory beyond one request or one response; ``write`` streams
  from a file, ``stream`` yields chunks as they arrive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import trio
import zstandard

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.cas.channel import call_metadata, open_channel
from casfs.cas.errors import (
    Aborted,
    CasError,
    DataLoss,
    FailedPrecondition,
    NotFound,
    Unimplemented,
    from_rpc_error,
    from_status,
)
from casfs.cas.quirks import RemoteQuirks, SizeCheck, is_aligned
from casfs.cas.retry import with_retries
from casfs.compression import CompressionError, Decompressor
from casfs.config import RemoteConfig
from casfs.digest import MAX_SIZE, Digest, DigestBuilder, DigestFunction, digest_file
from casfs.directio import DirectReader
from casfs.resource import BlobName, Compressor
from casfs.rpcstats import RpcStats

log = logging.getLogger("casfs.cas")
T = TypeVar("T")
# A piece of a blob as it arrived: bytes, or a view into the received message (no copy).
Chunk: TypeAlias = bytes | memoryview
ProgressCallback = Callable[[int], None]  # told the bytes done so far

# Whole blobs up to this size are read by BatchReadBlobs rather than ByteStream.
SMALL_READ = 64 << 10
# gRPC's usual message limit is 4 MiB; batches stay well under it whatever is advertised.
BATCH_LIMIT = 4 << 20
_BATCH_SLACK = 64 << 10
_PER_BLOB_OVERHEAD = 256
# Digests per FindMissingBlobs request (about 80 bytes each on the wire).
FIND_MISSING_CHUNK = 10_000
# A blob of the client's own, for learning how a remote that ignores sizes reads one.
PROBE_BLOB = b"casfs: a probe of how this server reads a blob under a wrong size\n"


class _Future(Protocol):
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...
    def cancel(self) -> bool: ...
    def result(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server says it supports, reduced to what casfs uses."""

    digest_functions: frozenset[DigestFunction]
    compressors: frozenset[Compressor]
    max_batch_bytes: int  # 0: no limit advertised
    raw: re_pb2.ServerCapabilities

    @classmethod
    def from_proto(cls, caps: re_pb2.ServerCapabilities) -> Capabilities:
        cache = caps.cache_capabilities
        return cls(
            digest_functions=frozenset(
                DigestFunction(v) for v in cache.digest_functions if v in _KNOWN_FUNCTIONS
            )
            or frozenset({DigestFunction.SHA256}),
            compressors=frozenset(
                Compressor(v) for v in cache.supported_compressors if v in _KNOWN_COMPRESSORS
            ),
            max_batch_bytes=cache.max_batch_total_size_bytes,
            raw=caps,
        )

    def batch_budget(self) -> int:
        """Bytes of blob data one batch request may carry."""
        limit = BATCH_LIMIT if self.max_batch_bytes <= 0 else min(self.max_batch_bytes, BATCH_LIMIT)
        return max(0, limit - _BATCH_SLACK)


_KNOWN_FUNCTIONS = {f.value for f in DigestFunction}
_KNOWN_COMPRESSORS = {c.value for c in Compressor}


async def _await_future(future: _Future, what: str) -> Any:
    """Sleep until a grpc future is done, without a thread; cancel it if we are cancelled."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    try:
        return future.result()
    except grpc.RpcError as error:
        raise from_rpc_error(error, what) from None


def _by_function(digests: Iterable[Digest]) -> dict[DigestFunction, list[Digest]]:
    """Digests grouped by digest function (a request names one function)."""
    groups: dict[DigestFunction, list[Digest]] = {}
    for digest in digests:
        groups.setdefault(digest.function, []).append(digest)
    return groups


def _batches(digests: Iterable[Digest], budget: int) -> Iterator[list[Digest]]:
    """Runs of digests of one function whose sizes (plus per-blob overhead) fit in
    ``budget``."""
    for group in _by_function(digests).values():
        batch: list[Digest] = []
        used = 0
        for digest in group:
            cost = digest.size + _PER_BLOB_OVERHEAD
            if batch and used + cost > budget:
                yield batch
                batch, used = [], 0
            batch.append(digest)
            used += cost
        if batch:
            yield batch


class CasClient:
    """One REAPI CAS endpoint and instance, used from trio.

    Create it inside ``trio.run`` (the channel must not cross a fork) and close it with
    ``aclose()`` or ``async with``.
    """

    def __init__(
        self,
        config: RemoteConfig,
        *,
        rpc_stats: RpcStats | None = None,
        quirks: RemoteQuirks | None = None,
    ) -> None:
        """``quirks``: what is known of the remote's habits, shared with the other clients
        of the same endpoint (a fresh record if None)."""
        self.config = config
        self.quirks = quirks if quirks is not None else RemoteQuirks(config.endpoint)
        self.instance = config.instance
        self._metadata = call_metadata(config)
        self._channel = open_channel(config)
        if rpc_stats is not None:  # metrics asked for: count and time every call
            self._channel = rpc_stats.client_channel(self._channel)
        self.resumed_writes = 0  # ByteStream Writes resumed at the server's committed_size
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(self._channel)
        # ByteStream.Read answering undecoded messages: the data is cut out of them by
        # _read_response_data, one copy fewer per message than a parse and a field access.
        self._raw_read = self._channel.unary_stream(
            "/google.bytestream.ByteStream/Read",
            request_serializer=bytestream_pb2.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        self._cas = re_grpc.ContentAddressableStorageStub(self._channel)
        self._capabilities_stub = re_grpc.CapabilitiesStub(self._channel)
        self._limiter = trio.CapacityLimiter(config.max_concurrent_streams)
        self._capabilities: Capabilities | None = None
        self._capabilities_lock = trio.Lock()

    async def __aenter__(self) -> CasClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; calls still running fail with CANCELLED."""
        self._channel.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _stream_timeout(self, nbytes: int) -> float:
        return self.config.rpc_timeout + nbytes / self.config.min_stream_rate

    async def _unary(self, method: Any, request: Any, what: str) -> Any:
        """One unary call with the deadline and headers; no retries."""
        future = method.future(request, timeout=self.config.rpc_timeout, metadata=self._metadata)
        return await _await_future(future, what)

    async def _retrying_unary(self, method: Any, request: Any, what: str) -> Any:
        return await with_retries(
            lambda: self._unary(method, request, what), self.config.retry, what
        )

    async def _in_thread(self, fn: Callable[[], T], call: grpc.Call, what: str) -> T:
        """Run a blocking step of a streaming call in a worker thread.

        On trio cancellation the thread is abandoned and the call cancelled, which wakes it.
        """
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except grpc.RpcError as error:
            raise from_rpc_error(error, what) from None
        except BaseException:
            call.cancel()
            raise

    # -- capabilities -----------------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        """The server's capabilities, asked once and cached.

        A server without the Capabilities service (UNIMPLEMENTED) is taken to support
        sha256, no compressors and no advertised batch limit.
        """
        async with self._capabilities_lock:
            if self._capabilities is None:
                request = re_pb2.GetCapabilitiesRequest(instance_name=self.instance)
                what = f"GetCapabilities {self.instance!r}"
                try:
                    caps = await self._retrying_unary(
                        self._capabilities_stub.GetCapabilities, request, what
                    )
                except Unimplemented:
                    caps = re_pb2.ServerCapabilities()
                self._capabilities = Capabilities.from_proto(caps)
            return self._capabilities

    # -- existence --------------------------------------------------------------------------

    async def find_missing(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the server does not have, asked in requests of at most 10,000."""
        missing: set[Digest] = set()
        for function, group in _by_function(digests).items():
            for start in range(0, len(group), FIND_MISSING_CHUNK):
                chunk = group[start : start + FIND_MISSING_CHUNK]
                request = re_pb2.FindMissingBlobsRequest(
                    instance_name=self.instance,
                    blob_digests=[d.to_proto() for d in chunk],
                    digest_function=function.name,
                )
                response = await self._retrying_unary(
                    self._cas.FindMissingBlobs, request, f"FindMissingBlobs ({len(chunk)})"
                )
                missing.update(
                    Digest.from_proto(d, function) for d in response.missing_blob_digests
                )
        return missing

    async def contains(self, digest: Digest) -> bool:
        """Whether the server has the blob at its size (the empty blob always exists)."""
        return digest.is_empty or not await self.find_missing_exact([digest])

    async def find_missing_exact(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the server does not have at their size: ``find_missing`` for a name
        someone typed, where a wrong size must be missing.

        Some remotes answer FindMissingBlobs by hash alone. The first request that finds a
        blob present also asks for the same hash with another size (a canary, no extra
        call): present too, the remote answers by hash, and a probe on a blob of the
        client's own (``_probe_deletion``) tells whether reading past a blob's end under a
        wrong size deletes it. Where it does not, each blob reported present is confirmed
        by reading its last byte and one past its end (``_size_confirmed``), and counts as
        missing if those say another size. Where it does, or the probe was impossible,
        nothing is confirmed (``RemoteQuirks.size_check`` says so and the log warns once).

        Transient errors propagate (nothing is learned from them); cancellation leaves the
        lesson unlearned, to be learned by the next call.
        """
        unique = [d for d in dict.fromkeys(digests) if not d.is_empty]
        canary = None
        if self.quirks.size_check is SizeCheck.UNKNOWN and unique:
            first = unique[0]
            other = first.size + 1 if first.size < MAX_SIZE else first.size - 1
            canary = Digest(first.hash, other, first.function)
        asked = [*unique, canary] if canary is not None and canary not in unique else unique
        missing = await self.find_missing(asked)
        if canary is not None and unique[0] not in missing:
            if canary in missing:
                self.quirks.learn_size_check(SizeCheck.BY_DIGEST)
            else:
                await self._probe_deletion()
        if canary is not None and canary not in unique:
            missing.discard(canary)
        if self.quirks.size_check is SizeCheck.BY_HASH:
            for digest in unique:
                if digest not in missing and not await self._size_confirmed(digest):
                    missing.add(digest)
        return missing

    async def _probe_deletion(self) -> None:
        """The remote answers FindMissingBlobs by hash: learn whether a read past a blob's
        end under a wrong size deletes the blob (buildbox-casd does), on a tiny blob of the
        client's own (``PROBE_BLOB``, stored if missing), never on someone else's. Once per
        remote; a remote that refuses the blob (a read-only token) is not probed. A
        transient error propagates and, like cancellation, leaves it to the next lookup."""
        async with self.quirks.probing:
            if self.quirks.size_check is not SizeCheck.UNKNOWN:
                return
            if not self.quirks.may_store_probe:
                self.quirks.learn_size_check(
                    SizeCheck.NOT_PROBED, "a read-only mount stores no probe blob"
                )
                return
            probe = Digest.of_bytes(PROBE_BLOB)
            try:
                if await self.find_missing([probe]):
                    await self.batch_update([(probe, PROBE_BLOB)])
                with contextlib.suppress(CasError):  # it was read: what it did is what counts
                    await self._read_once(Digest(probe.hash, probe.size + 1), probe.size, 1)
                deleted = bool(await self.find_missing([probe]))
            except CasError as error:
                if error.transient:
                    raise
                self.quirks.learn_size_check(SizeCheck.NOT_PROBED, f"probe refused: {error}")
                return
            self.quirks.learn_size_check(
                SizeCheck.BY_HASH_DELETING if deleted else SizeCheck.BY_HASH
            )

    async def _size_confirmed(self, digest: Digest) -> bool:
        """Whether a blob that a remote answering by hash reports present has ``digest``'s
        size: its last byte can be read and nothing past it. Only for a remote whose reads
        past the end delete nothing (``SizeCheck.BY_HASH``); transient errors propagate."""
        what = f"confirm the size of {digest}"
        try:
            last = await with_retries(
                lambda: self._read_once(digest, digest.size - 1, 1), self.config.retry, what
            )
        except CasError as error:
            if error.transient:
                raise
            return False  # no byte there: the blob is shorter
        try:
            beyond = await with_retries(
                lambda: self._read_once(digest, digest.size, 1), self.config.retry, what
            )
        except CasError as error:
            if error.transient:
                raise
            beyond = b""  # refused past the end (OUT_OF_RANGE, INVALID_ARGUMENT): it ends there
        if len(last) != 1 or beyond:
            log.info("%s: the server has a blob of another size under this hash", digest)
            return False
        return True

    # -- reads ------------------------------------------------------------------------------

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
            and await self._fits_batch(digest)
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
            lambda: b"".join(_read_response_data(m) for m in call),
            call,
            f"Read {name} [{offset}+{limit}]",
        )

    async def _fits_batch(self, digest: Digest) -> bool:
        return digest.size <= (await self.capabilities()).batch_budget()

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
        attempts = self.config.retry.delays()
        while position < end:
            try:
                async for chunk in self._read_stream(name, position, end, digest.size, compressor):
                    position += len(chunk)
                    yield chunk
                    attempts = self.config.retry.delays()  # progress resets the budget
            except _Realign:  # learned just now: ask again, in whole blocks
                continue
            except CasError as error:
                delay = next(attempts, None)
                if not error.transient or delay is None:
                    raise
                log.info("%s: %s at offset %d; resuming in %.2fs", what, error, position, delay)
                await trio.sleep(delay)
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
                data = decompress(b"" if response is None else _read_response_data(response), final)
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
        if await self._fits_batch(digest):
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
        for batch in _batches(small, budget):
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

    # -- writes -----------------------------------------------------------------------------

    async def batch_update(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Upload small blobs by BatchUpdateBlobs, in batches under the message limit."""
        budget = (await self.capabilities()).batch_budget()
        data_of = {digest: data for digest, data in blobs if digest.size > 0}
        for digest, data in data_of.items():
            if len(data) != digest.size:
                raise ValueError(f"{digest}: got {len(data)} bytes")
        for batch in _batches(data_of, budget):
            function = batch[0].function
            request = re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.instance,
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(digest=d.to_proto(), data=data_of[d])
                    for d in batch
                ],
                digest_function=function.name,
            )
            response = await self._retrying_unary(
                self._cas.BatchUpdateBlobs, request, f"BatchUpdateBlobs ({len(batch)})"
            )
            for item in response.responses:
                digest = Digest.from_proto(item.digest, function)
                error = from_status(item.status.code, item.status.message, f"upload {digest}")
                if error is not None:
                    raise error

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
                response = await _await_future(future, what)
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
        if digest.size <= (await self.capabilities()).batch_budget():
            data = await trio.to_thread.run_sync(Path(path).read_bytes)
            if Digest.of_bytes(data, function) != digest:
                raise DataLoss(f"{path} changed while it was being uploaded")
            await self.batch_update([(digest, data)])
        else:
            sent = (lambda done: progress("uploading", done)) if progress else None
            await self.write(digest, path, sent)
        return digest

    async def upload_bytes(
        self, data: bytes, function: DigestFunction = DigestFunction.SHA256
    ) -> Digest:
        """Upload a small in-memory blob (a Directory message, a test fixture)."""
        builder = DigestBuilder(function)
        builder.update(data)
        digest = builder.digest()
        if digest.size > (await self.capabilities()).batch_budget():
            raise ValueError(f"{digest} is too large for a batch; write it from a file")
        if await self.find_missing([digest]):
            await self.batch_update([(digest, data)])
        return digest

    async def _wire_compressor(self, digest: Digest, preferred: Sequence[Compressor]) -> Compressor:
        """The compressor to use for a blob: only when asked for and advertised."""
        if not self.config.compression or digest.size < 4096:
            return Compressor.IDENTITY
        advertised = (await self.capabilities()).compressors
        return next((c for c in preferred if c in advertised), Compressor.IDENTITY)


class _Realign(Exception):
    """A read was refused for not being in whole blocks; the remote's quirks now say so,
    and the next attempt asks for whole blocks. Never leaves this module."""


_DATA_TAG = 0x52  # ReadResponse.data: field 10, length-delimited


def _read_response_data(message: bytes) -> Chunk:
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
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    with open(path, "rb") as file:
        position = 0
        first = True
        while chunk := file.read(chunk_size):
            if progress is not None:
                progress(file.tell())
            data = compressor.compress(chunk)
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
            data=compressor.flush(),
            finish_write=True,
        )
