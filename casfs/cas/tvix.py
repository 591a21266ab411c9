"""An async client for tvix castore's BlobService and DirectoryService, for trio.

The same concurrency rules as ``casfs.cas.client`` (its notes hold here too): unary calls
wait on grpc futures without a thread, each blocking step of a stream runs in a worker
thread under one ``CapacityLimiter``, cancelling the trio task cancels the call, every
call has a deadline, and errors leave only as ``CasError`` subclasses.

tvix names blobs by blake3 hash alone. What arrives is checked before it is handed on:
``stream`` checks the length and the hash (the last chunk is withheld until both match),
``put`` checks the digest the server answers against the local hash, and
``get_directories`` checks each Directory's digest, names and place in the graph.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2, rpc_directory_pb2, rpc_directory_pb2_grpc
from casfs._proto.tvix import rpc_blobstore_pb2 as blob_pb2
from casfs._proto.tvix import rpc_blobstore_pb2_grpc as blob_grpc
from casfs.cas.calls import Chunk, await_future
from casfs.cas.channel import call_metadata, open_channel
from casfs.cas.errors import DataLoss, InvalidArgument, from_rpc_error
from casfs.cas.retry import with_retries
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestBuilder, DigestError, DigestFunction
from casfs.rpcstats import RpcStats

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One piece of a blob as Stat lists it, readable by ``stream`` under its own digest."""

    digest: Digest


def _raw(digest: Digest) -> bytes:
    if digest.function is not DigestFunction.BLAKE3:
        raise DigestError(f"tvix names blobs by blake3, not {digest.function.name_lower}")
    return bytes.fromhex(digest.hash)


def _blake3(raw: bytes, size: int, what: str) -> Digest:
    """A digest the server sent; ``DataLoss`` if it is not 32 bytes."""
    if len(raw) != tvix_directory.DIGEST_BYTES:
        raise DataLoss(f"{what}: the server sent a digest of {len(raw)} bytes")
    return Digest(raw.hex(), size, DigestFunction.BLAKE3)


class TvixClient:
    """One tvix castore endpoint. Create it inside ``trio.run``; close it with ``aclose()``
    or ``async with``. ``config.instance`` is not used: tvix has no instance names."""

    def __init__(self, config: RemoteConfig, *, rpc_stats: RpcStats | None = None) -> None:
        self.config = config
        self._metadata = call_metadata(config)
        self._channel = open_channel(config)
        if rpc_stats is not None:
            self._channel = rpc_stats.client_channel(self._channel)
        self._blobs = blob_grpc.BlobServiceStub(self._channel)
        self._directories = rpc_directory_pb2_grpc.DirectoryServiceStub(self._channel)
        self._limiter = trio.CapacityLimiter(config.max_concurrent_streams)

    async def __aenter__(self) -> TvixClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; calls still running fail with CANCELLED."""
        self._channel.close()

    def _stream_timeout(self, nbytes: int) -> float:
        return self.config.rpc_timeout + nbytes / self.config.min_stream_rate

    async def _next(self, responses: Iterator[T], call: grpc.Call, what: str) -> T | None:
        """The next message of a streaming call, waited for in a worker thread; ``None`` at
        the end. On trio cancellation the call is cancelled, which wakes the thread."""
        try:
            return await trio.to_thread.run_sync(
                lambda: next(responses, None), limiter=self._limiter, abandon_on_cancel=True
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, what) from None
        except BaseException:
            call.cancel()
            raise

    async def _unary(self, method: Any, request: Message, what: str) -> Any:
        """A unary call with the deadline and headers, retried on transient errors."""

        async def attempt() -> Any:
            future = method.future(
                request, timeout=self.config.rpc_timeout, metadata=self._metadata
            )
            return await await_future(future, what)

        return await with_retries(attempt, self.config.retry, what)

    # -- blobs ------------------------------------------------------------------------------

    async def stat(self, digest: Digest, *, chunks: bool = False) -> list[ChunkInfo]:
        """Raise ``NotFound`` unless the blob exists. With ``chunks``, the pieces the
        server lists (it may list none); their sizes must add up to ``digest.size``."""
        what = f"tvix Stat blake3 {digest.hash}"
        request = blob_pb2.StatBlobRequest(digest=_raw(digest), send_chunks=chunks)
        response = await self._unary(self._blobs.Stat, request, what)
        listed = [ChunkInfo(_blake3(c.digest, c.size, what)) for c in response.chunks]
        if listed and sum(c.digest.size for c in listed) != digest.size:
            raise DataLoss(f"{what}: the chunks do not add up to {digest.size} bytes")
        return listed

    async def stream(self, digest: Digest) -> AsyncGenerator[Chunk, None]:
        """Yield the blob (or a chunk Stat listed) in the pieces the server sends.

        More or fewer bytes than ``digest.size``, or bytes with another blake3 hash, raise
        ``DataLoss``; the last piece is withheld until the whole blob has been checked, so
        a consumer never gets a whole wrong blob without an error. Not retried: tvix's Read
        has no offset to resume at, and bytes already handed on cannot be taken back.
        """
        what = f"tvix Read blake3 {digest}"
        call = self._blobs.Read(
            blob_pb2.ReadBlobRequest(digest=_raw(digest)),
            timeout=self._stream_timeout(digest.size),
            metadata=self._metadata,
        )
        builder = DigestBuilder(DigestFunction.BLAKE3)
        pending: Chunk = b""
        try:
            while (response := await self._next(call, call, what)) is not None:
                data = response.data
                if builder.size + len(data) > digest.size:
                    raise DataLoss(f"{what}: the server sent more than {digest.size} bytes")
                builder.update(data)
                if pending:
                    yield pending
                pending = data
        finally:
            call.cancel()
        if builder.digest() != digest:
            raise DataLoss(
                f"{what}: the server sent {builder.size} bytes that do not match the digest"
            )
        if pending:
            yield pending

    async def put(self, path: os.PathLike[str] | str) -> Digest:
        """Upload the file at ``path`` by Put, in ``config.chunk_size`` messages read as
        they are sent, and return its digest.

        The file is hashed while it is sent; a server that answers another digest raises
        ``DataLoss``. A transient failure sends the whole file again (Put has no resume).
        Cancellation cancels the call; the server keeps no temporary file of it (and at
        most the bytes it received, under their own digest: see the servicer).
        """
        what = f"tvix Put {os.fspath(path)}"

        async def attempt() -> Digest:
            builder = DigestBuilder(DigestFunction.BLAKE3)
            size = os.stat(path).st_size
            future = self._blobs.Put.future(
                _file_chunks(path, self.config.chunk_size, builder.update),
                timeout=self._stream_timeout(size),
                metadata=self._metadata,
            )
            response = await await_future(future, what)
            local = builder.digest()
            answered = _blake3(response.digest, local.size, what)
            if answered != local:
                raise DataLoss(f"{what}: the server stored {answered.hash}, not {local.hash}")
            return local

        return await with_retries(attempt, self.config.retry, what)

    # -- directories ------------------------------------------------------------------------

    async def put_directories(self, directories: Sequence[castore_pb2.Directory]) -> bytes:
        """Upload Directories, leaves first (each may refer only to those before it, or to
        stored ones); returns the root's (the last one's) raw digest, checked against the
        local one. A Directory that fails ``tvix_directory.check`` raises
        ``InvalidArgument`` before anything is sent."""
        if not directories:
            raise ValueError("no Directories to put")
        for directory in directories:
            try:
                tvix_directory.check(directory)
            except tvix_directory.DirectoryError as error:
                raise InvalidArgument(f"tvix Directory Put: {error}") from None
        root = tvix_directory.digest_of(directories[-1])
        what = f"tvix Directory Put {root.hex()}"

        async def attempt() -> bytes:
            future = self._directories.Put.future(
                iter(directories), timeout=self.config.rpc_timeout, metadata=self._metadata
            )
            response = await await_future(future, what)
            if response.root_digest != root:
                raise DataLoss(f"{what}: the server answered {response.root_digest.hex()}")
            return root

        return await with_retries(attempt, self.config.retry, what)

    async def get_directories(
        self, digest: bytes, *, recursive: bool = False
    ) -> AsyncIterator[castore_pb2.Directory]:
        """Yield the Directory named ``digest`` and, with ``recursive``, those below it.

        Each is checked before it is yielded: its digest must be the one asked for or one
        a Directory before it refers to (and not sent before), and its names must pass
        ``tvix_directory.check``; otherwise ``DataLoss``. A root the server does not have
        raises ``NotFound``.
        """
        what = f"tvix Directory Get {digest.hex()}"
        if len(digest) != tvix_directory.DIGEST_BYTES:
            raise InvalidArgument(f"{what}: a digest of {len(digest)} bytes")
        call = self._directories.Get(
            rpc_directory_pb2.GetDirectoryRequest(digest=digest, recursive=recursive),
            timeout=self.config.rpc_timeout,
            metadata=self._metadata,
        )
        expected = {digest}
        received: set[bytes] = set()
        try:
            while (directory := await self._next(call, call, what)) is not None:
                actual = tvix_directory.digest_of(directory)
                if actual not in expected or actual in received:
                    raise DataLoss(f"{what}: the server sent an unasked Directory {actual.hex()}")
                try:
                    tvix_directory.check(directory)
                except tvix_directory.DirectoryError as error:
                    raise DataLoss(f"{what}: Directory {actual.hex()}: {error}") from None
                received.add(actual)
                expected.update(node.digest for node in directory.directories)
                yield directory
                if not recursive:
                    return
        finally:
            call.cancel()
        if digest not in received:
            raise DataLoss(f"{what}: the server sent nothing")


def _file_chunks(
    path: os.PathLike[str] | str, chunk_size: int, hashed: Callable[[bytes], None]
) -> Iterator[blob_pb2.BlobChunk]:
    """Put requests for the file, one chunk at a time (runs in grpc's request thread); each
    chunk is passed to ``hashed`` as it is sent. The empty file is one empty message."""
    with open(path, "rb") as file:
        first = True
        while (data := file.read(chunk_size)) or first:
            first = False
            hashed(data)
            yield blob_pb2.BlobChunk(data=data)
