"""tvix castore's DirectoryService (Get, Put), storing each Directory as a blake3 blob.

A Directory is stored under the blake3 digest of its canonical serialization, in the same
store and instance as tvix blobs (so it is also ``blobs/blake3/<hex>/<size>`` to REAPI
clients). Nothing is stored before it passes ``casfs.tvix_directory.check`` and its
children are known, so every stored Directory's names are safe to use as paths.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.message import DecodeError

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs._proto.tvix import rpc_directory_pb2 as pb2
from casfs._proto.tvix import rpc_directory_pb2_grpc as pb2_grpc
from casfs.digest import Digest, DigestFunction
from casfs.server.grpc_errors import RequestError, grpc_errors
from casfs.server.instances import Instances
from casfs.server.streams import StreamGuard
from casfs.server.tvix_blobs import stored_digest, tvix_instance
from casfs.store.blobstore import BlobStore
from casfs.store.errors import BlobNotFound

# A Directory is held in memory whole; larger ones are refused (as GetTree refuses them).
MAX_DIRECTORY_BYTES = 4 << 20


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def load(blobs: BlobStore, raw: bytes) -> castore_pb2.Directory:
    """The stored Directory named ``raw``. Raises ``BlobNotFound`` if it is not stored and
    ``RequestError`` (INVALID_ARGUMENT) if the blob is no Directory."""
    digest = stored_digest(blobs, raw)
    if digest.size > MAX_DIRECTORY_BYTES:
        raise _invalid(f"blake3 {digest} is too large for a Directory")
    with blobs.open(digest) as file:
        data = file.read()
    try:
        directory = castore_pb2.Directory.FromString(data)
        tvix_directory.check(directory)
    except (DecodeError, tvix_directory.DirectoryError) as error:
        raise _invalid(f"blake3 {digest} is not a valid Directory: {error}") from None
    return directory


class TvixDirectoryServicer(pb2_grpc.DirectoryServiceServicer):
    """DirectoryService over one instance's blob store."""

    def __init__(self, instances: Instances, streams: StreamGuard) -> None:
        self.instances = instances
        self.streams = streams

    def Get(
        self, request: pb2.GetDirectoryRequest, context: grpc.ServicerContext
    ) -> Iterator[castore_pb2.Directory]:
        """The Directory asked for (NOT_FOUND if absent) and, with ``recursive``, those
        below it breadth first, each once. A child missing from the store ends the stream
        with NOT_FOUND after the Directories before it."""
        with (
            grpc_errors(context, "tvix Directory Get"),
            self.streams.hold(context, "tvix Directory Get") as stream,
        ):
            blobs = tvix_instance(self.instances).blobs
            if request.WhichOneof("by_what") != "digest":
                raise _invalid("GetDirectoryRequest names no digest")
            queue = [request.digest]
            seen = {request.digest}
            while queue:
                directory = load(blobs, queue.pop(0))
                yield directory
                stream.touch()
                if not request.recursive:
                    return
                for node in directory.directories:
                    if node.digest not in seen:
                        seen.add(node.digest)
                        queue.append(node.digest)

    def Put(
        self, request_iterator: Iterator[castore_pb2.Directory], context: grpc.ServicerContext
    ) -> pb2.PutDirectoryResponse:
        """Check and store each Directory as it arrives; answer the last one's digest.

        Each Directory must pass ``tvix_directory.check``, and each DirectoryNode must name
        a Directory sent earlier in the stream or already stored, with the size that
        Directory has, and every Directory sent must be below the last one, the root (as
        upstream requires). The first one that fails ends the call with INVALID_ARGUMENT;
        those before it stay stored (each is valid and complete on its own). A stream cut
        off stores nothing more.
        """
        with (
            grpc_errors(context, "tvix Directory Put"),
            self.streams.hold(context, "tvix Directory Put") as stream,
        ):
            blobs = tvix_instance(self.instances).blobs
            sizes: dict[bytes, int] = {}  # digest -> size_of, for this stream's Directories
            referenced: set[bytes] = set()  # digests some Directory of this stream names
            last: bytes | None = None
            for number, directory in enumerate(stream.watch(request_iterator), start=1):
                try:
                    tvix_directory.check(directory)
                except tvix_directory.DirectoryError as error:
                    raise _invalid(f"Directory #{number}: {error}") from None
                for node in directory.directories:
                    size = sizes.get(node.digest)
                    if size is None:
                        try:
                            size = tvix_directory.size_of(load(blobs, node.digest))
                        except BlobNotFound:
                            raise _invalid(
                                f"Directory #{number}: directory {node.name[:200]!r} refers to "
                                f"{node.digest.hex()}, which was not sent before it"
                            ) from None
                    referenced.add(node.digest)
                    if node.size != size:
                        raise _invalid(
                            f"Directory #{number}: directory {node.name[:200]!r} has size "
                            f"{node.size}, but {size} entries are below it"
                        )
                data = tvix_directory.canonical_bytes(directory)
                if len(data) > MAX_DIRECTORY_BYTES:
                    raise _invalid(f"Directory #{number} has more than {MAX_DIRECTORY_BYTES} bytes")
                digest = Digest.of_bytes(data, DigestFunction.BLAKE3)
                blobs.put(digest, data)
                last = bytes.fromhex(digest.hash)
                sizes[last] = tvix_directory.size_of(directory)
            if last is None:
                raise _invalid("empty Directory Put stream")
            # Each Directory names only earlier ones, so one named by a later Directory
            # is below the root; one named by none is not.
            stray = sizes.keys() - referenced - {last}
            if stray:
                raise _invalid(f"Directory {min(stray).hex()} is not below the root (the last one)")
            return pb2.PutDirectoryResponse(root_digest=last)
