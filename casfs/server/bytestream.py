"""ByteStream: ranged blob reads and resumable uploads over the blob store."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs.compression import compressor
from casfs.resource import BlobName, Compressor, parse_read_name, parse_write_name
from casfs.server.cas import check_function
from casfs.server.grpc_errors import RequestError, grpc_errors
from casfs.server.instances import Instances
from casfs.server.streams import StreamGuard
from casfs.store.blobread import pieces

log = logging.getLogger("casfs.server")

# One Read response message; 1 MiB messages move about three times the bytes per second
# of 64 KiB ones over grpcio.
READ_CHUNK = 1 << 20


class ByteStreamServicer(bytestream_pb2_grpc.ByteStreamServicer):
    """Read, Write and QueryWriteStatus for ``{instance}/blobs/...`` resource names; Read
    and Write streams are held under ``streams`` (bounded in number, ended when idle)."""

    def __init__(self, instances: Instances, streams: StreamGuard) -> None:
        self.instances = instances
        self.streams = streams

    def Read(
        self, request: bytestream_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytestream_pb2.ReadResponse]:
        """Stream ``[read_offset, read_offset + read_limit)`` of a blob (limit 0: to the end).

        For ``compressed-blobs`` names the offset counts uncompressed bytes, the limit must be
        0 (REAPI) and the data is compressed on the fly. A limit past the end is clamped.
        """
        with (
            grpc_errors(context, f"Read {request.resource_name[:200]}"),
            self.streams.hold(context, "Read") as stream,
        ):
            name = parse_read_name(request.resource_name)
            check_function(name.digest)
            instance = self.instances.get(name.instance)
            if request.read_limit < 0:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "negative read_limit")
            if request.read_limit and name.compressor is not Compressor.IDENTITY:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT, "read_limit must be 0 for compressed-blobs"
                )
            size = name.digest.size
            if not 0 <= request.read_offset <= size:
                raise RequestError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"read_offset {request.read_offset} is outside the blob of {size} bytes",
                )
            remaining = size - request.read_offset
            if request.read_limit:
                remaining = min(remaining, request.read_limit)
            compress = compressor(name.compressor)
            log.debug(
                "Read %s offset=%d length=%d", name.read_name(), request.read_offset, remaining
            )
            with instance.blobs.open(name.digest) as file:
                chunks = pieces(file, request.read_offset, remaining, READ_CHUNK)
                try:
                    for chunk in chunks:
                        remaining -= len(chunk)
                        data = compress(chunk, remaining <= 0)
                        if data:
                            yield bytestream_pb2.ReadResponse(data=data)
                            stream.touch()
                        if remaining <= 0:
                            return
                    data = compress(b"", True)  # nothing to read, or the file ended early
                    if data:
                        yield bytestream_pb2.ReadResponse(data=data)
                finally:
                    chunks.close()  # a cancelled call: stop the reads in flight

    def Write(
        self,
        request_iterator: Iterator[bytestream_pb2.WriteRequest],
        context: grpc.ServicerContext,
    ) -> bytestream_pb2.WriteResponse:
        """Append to the upload session named by the first request; commit on finish_write.

        A blob that is already stored ends the call at once with its full size (-1 for a
        compressed upload, as REAPI says). A stream that ends without finish_write keeps its
        bytes for a later resume.
        """
        with grpc_errors(context, "Write"), self.streams.hold(context, "Write") as stream:
            requests = stream.watch(request_iterator)
            first = next(requests, None)
            if first is None:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "empty Write stream")
            name = parse_write_name(first.resource_name)
            check_function(name.digest)
            instance = self.instances.get(name.instance)
            if name.digest.size == 0 and not name.digest.is_empty:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{name.digest} has size 0, but it is not the empty blob's digest",
                )
            existing = bytestream_pb2.WriteResponse(
                committed_size=-1
                if name.compressor is not Compressor.IDENTITY
                else name.digest.size
            )
            if instance.blobs.contains(name.digest):
                return existing
            instance.blobs.check_fits(name.digest.size)
            with instance.uploads.open(_session_key(name), name.digest, name.compressor) as session:
                if session.complete or instance.blobs.contains(name.digest):
                    return existing  # another stream finished it while this one waited
                request: bytestream_pb2.WriteRequest | None = first
                while request is not None:
                    if request.resource_name and request.resource_name != first.resource_name:
                        raise RequestError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "resource_name changed within one Write stream",
                        )
                    session.write(request.write_offset, request.data)
                    if request.finish_write:
                        with stream.working():
                            session.finish()
                        break
                    request = next(requests, None)
                return bytestream_pb2.WriteResponse(committed_size=session.committed)

    def QueryWriteStatus(
        self, request: bytestream_pb2.QueryWriteStatusRequest, context: grpc.ServicerContext
    ) -> bytestream_pb2.QueryWriteStatusResponse:
        """How many bytes of an upload the server holds; survives a server restart."""
        with grpc_errors(context, f"QueryWriteStatus {request.resource_name[:200]}"):
            name = parse_write_name(request.resource_name)
            check_function(name.digest)
            instance = self.instances.get(name.instance)
            committed, complete = instance.uploads.status(
                _session_key(name), name.digest, name.compressor
            )
            return bytestream_pb2.QueryWriteStatusResponse(
                committed_size=committed, complete=complete
            )


def _session_key(name: BlobName) -> str:
    """The upload session a write name refers to (optional metadata does not count)."""
    return BlobName(name.instance, name.digest, name.compressor, name.upload_id).write_name()
