"""tvix castore's BlobService (Stat, Read, Put) over the same blob store as REAPI.

tvix names a blob by the raw 32 bytes of its blake3 hash and nothing else, so the size is
what the store holds under that hash: a blob put here is ``blobs/blake3/<hex>/<size>`` to
REAPI clients, and a blake3 blob uploaded by ByteStream is readable here. tvix has no
instance names: it is served the store of the empty instance name when that is served,
else of the first configured instance (``tvix_instance``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from casfs._proto.tvix import rpc_blobstore_pb2 as pb2
from casfs._proto.tvix import rpc_blobstore_pb2_grpc as pb2_grpc
from casfs.digest import Digest, DigestBuilder, DigestFunction
from casfs.server.bytestream import READ_CHUNK
from casfs.server.grpc_errors import RequestError, grpc_errors
from casfs.server.instances import Instance, Instances
from casfs.server.streams import StreamGuard
from casfs.store.blobstore import BlobStore, disk_errors
from casfs.store.errors import BlobNotFound
from casfs.tvix_directory import DIGEST_BYTES

log = logging.getLogger("casfs.server")

_EMPTY = Digest.empty(DigestFunction.BLAKE3)


def tvix_instance(instances: Instances) -> Instance:
    """The instance whose store tvix clients see: the empty name's, else the first one's."""
    names = instances.names
    return instances.get("" if "" in names else names[0])


def blake3_hex(raw: bytes) -> str:
    """A request's raw digest as hex; INVALID_ARGUMENT unless it has 32 bytes."""
    if len(raw) != DIGEST_BYTES:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"digest of {len(raw)} bytes: tvix digests are {DIGEST_BYTES}-byte blake3 hashes",
        )
    return raw.hex()


def stored_digest(blobs: BlobStore, raw: bytes) -> Digest:
    """The full digest (with the size) of the blake3 blob stored under ``raw``.

    Raises ``RequestError`` for a malformed digest and ``BlobNotFound`` for a missing blob.
    """
    hex_hash = blake3_hex(raw)
    if hex_hash == _EMPTY.hash:
        return _EMPTY
    probe = Digest(hex_hash, 0, DigestFunction.BLAKE3)
    try:
        size = blobs.path(probe).stat().st_size
    except FileNotFoundError:
        raise BlobNotFound(f"blob blake3 {hex_hash} not found") from None
    return Digest(hex_hash, size, DigestFunction.BLAKE3)


class TvixBlobServicer(pb2_grpc.BlobServiceServicer):
    """BlobService over one instance's blob store."""

    def __init__(self, instances: Instances, streams: StreamGuard) -> None:
        self.instances = instances
        self.streams = streams

    def Stat(
        self, request: pb2.StatBlobRequest, context: grpc.ServicerContext
    ) -> pb2.StatBlobResponse:
        """NOT_FOUND for a missing blob. With ``send_chunks``, one chunk (the store keeps
        blobs whole), readable by Read under the blob's own digest; none for the empty blob.
        No bao is sent (upstream says a server MAY)."""
        with grpc_errors(context, "tvix Stat"):
            blobs = tvix_instance(self.instances).blobs
            digest = stored_digest(blobs, request.digest)
            if not blobs.contains(digest):
                raise BlobNotFound(f"blob blake3 {digest} not found")
            response = pb2.StatBlobResponse()
            if request.send_chunks and digest.size > 0:
                response.chunks.add(digest=request.digest, size=digest.size)
            return response

    def Read(
        self, request: pb2.ReadBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.BlobChunk]:
        """The whole blob in 1 MiB messages, read from the store file as they are sent.
        A blob evicted between Stat and Read is NOT_FOUND."""
        with (
            grpc_errors(context, "tvix Read"),
            self.streams.hold(context, "tvix Read") as stream,
        ):
            blobs = tvix_instance(self.instances).blobs
            digest = stored_digest(blobs, request.digest)
            with blobs.open(digest) as file:
                while chunk := file.read(READ_CHUNK):
                    yield pb2.BlobChunk(data=chunk)
                    stream.touch()

    def Put(
        self, request_iterator: Iterator[pb2.BlobChunk], context: grpc.ServicerContext
    ) -> pb2.PutBlobResponse:
        """Stream the bytes into a temporary file of the store, hashing them on the way;
        at the end of the stream commit them under their blake3 digest and answer it.

        The blob is refused (RESOURCE_EXHAUSTED) as soon as it outgrows the store's
        ``--max-size``. A stream refused, or cut off (the client cancelled, the connection
        broke), has its temporary file removed and commits nothing, unless grpcio ended
        the request stream of the cancelled call as if it had finished before the cancel
        was seen: Put has no end-of-blob marker, so then the bytes received are committed
        under their own digest.
        """
        with (
            grpc_errors(context, "tvix Put"),
            self.streams.hold(context, "tvix Put") as stream,
        ):
            blobs = tvix_instance(self.instances).blobs
            builder = DigestBuilder(DigestFunction.BLAKE3)
            file, path = blobs.temp_file()
            try:
                with disk_errors("tvix Put"), file:
                    for chunk in stream.watch(request_iterator):
                        blobs.check_fits(builder.size + len(chunk.data))
                        file.write(chunk.data)
                        builder.update(chunk.data)
                digest = builder.digest()
                if stream.ended or not context.is_active():
                    # grpcio can end the request iterator of a cancelled call (by the
                    # client, or by the idle watchdog) as if the client had closed it; a
                    # cut-off Put must not commit what it got.
                    raise RequestError(grpc.StatusCode.CANCELLED, "tvix Put: cancelled")
                if not blobs.contains(digest):
                    with stream.working():
                        blobs.commit(digest, path, verified=True)
            finally:
                path.unlink(missing_ok=True)
            log.debug("tvix Put blake3 %s", digest)
            return pb2.PutBlobResponse(digest=bytes.fromhex(digest.hash))
