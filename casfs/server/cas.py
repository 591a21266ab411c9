"""ContentAddressableStorage: FindMissingBlobs, batch reads and writes, GetTree."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.message import DecodeError

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs._proto import status_pb2
from casfs.compression import CompressionError, decompress
from casfs.digest import Digest, DigestFunction
from casfs.resource import Compressor
from casfs.server.grpc_errors import RequestError, grpc_errors, status_of
from casfs.server.instances import Instances
from casfs.server.streams import StreamGuard
from casfs.store.errors import BlobNotFound, HashMismatch, StoreError

# What the server advertises as max_batch_total_size_bytes; the gRPC message limit the
# server accepts is set well above it (see app.py).
MAX_BATCH_BYTES = 4 << 20
# A compressed batch may unpack to more, but not without bound: it is held in memory.
MAX_BATCH_DECOMPRESSED = 4 * MAX_BATCH_BYTES
MAX_DIRECTORY_BYTES = 64 << 20
GET_TREE_PAGE = 1000


# The digest functions the server stores and advertises; others are refused, so that no
# client stores blobs under a function it was never offered.
DIGEST_FUNCTIONS = (DigestFunction.SHA256, DigestFunction.BLAKE3)


def check_function(digest: Digest) -> Digest:
    """``digest``, if its function is one the server accepts; else ``RequestError``."""
    if digest.function not in DIGEST_FUNCTIONS:
        accepted = ", ".join(f.name_lower for f in DIGEST_FUNCTIONS)
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"digest function {digest.function.name_lower} is not supported (only {accepted})",
        )
    return digest


def digest_function(value: int, hash_: str) -> DigestFunction:
    """The request's digest function; 0 (unset) means infer it from the hash length."""
    if value == 0:
        return DigestFunction.from_hex_length(len(hash_))
    try:
        return DigestFunction(value)
    except ValueError:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown digest function {value}"
        ) from None


def to_digest(proto: re_pb2.Digest, function_value: int) -> Digest:
    """A request digest as a ``Digest``; raises ``DigestError`` when malformed and
    ``RequestError`` for a digest function the server does not accept."""
    return check_function(Digest.from_proto(proto, digest_function(function_value, proto.hash)))


def _status(error: Exception | None) -> status_pb2.Status:
    if error is None:
        return status_pb2.Status(code=0)
    code, message = status_of(error)
    if isinstance(error, HashMismatch):  # REAPI: a batch digest mismatch is INVALID_ARGUMENT
        code = grpc.StatusCode.INVALID_ARGUMENT
    return status_pb2.Status(code=code.value[0], message=message)


def _compressor(value: int) -> Compressor:
    try:
        return Compressor(value)
    except ValueError:
        raise CompressionError(f"unknown compressor {value}") from None


class CasServicer(re_grpc.ContentAddressableStorageServicer):
    """The CAS service over the instances' blob stores; GetTree streams are held under
    ``streams``."""

    def __init__(self, instances: Instances, streams: StreamGuard) -> None:
        self.instances = instances
        self.streams = streams

    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        """The requested digests the store does not hold (the empty blob is always held)."""
        with grpc_errors(context, "FindMissingBlobs"):
            instance = self.instances.get(request.instance_name)
            digests = [to_digest(d, request.digest_function) for d in request.blob_digests]
            missing = instance.blobs.missing(digests)
            return re_pb2.FindMissingBlobsResponse(
                missing_blob_digests=[d.to_proto() for d in missing]
            )

    def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchUpdateBlobsResponse:
        """Store each blob after checking it; each answer carries its own status."""
        with grpc_errors(context, "BatchUpdateBlobs"):
            instance = self.instances.get(request.instance_name)
            total = sum(len(r.data) for r in request.requests)
            declared = sum(max(0, r.digest.size_bytes) for r in request.requests)
            if total > MAX_BATCH_BYTES or declared > MAX_BATCH_DECOMPRESSED:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch of {total} bytes ({declared} uncompressed) exceeds "
                    f"max_batch_total_size_bytes {MAX_BATCH_BYTES}",
                )
            response = re_pb2.BatchUpdateBlobsResponse()
            for item in request.requests:
                error: Exception | None = None
                try:
                    digest = to_digest(item.digest, request.digest_function)
                    data = decompress(_compressor(item.compressor), item.data, digest.size)
                    instance.blobs.put(digest, data)
                except (StoreError, RequestError, ValueError) as e:  # DigestError, CompressionError
                    error = e
                response.responses.add(digest=item.digest, status=_status(error))
            return response

    def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchReadBlobsResponse:
        """Return each blob whole; a missing one gets NOT_FOUND in its own answer."""
        with grpc_errors(context, "BatchReadBlobs"):
            instance = self.instances.get(request.instance_name)
            digests = [to_digest(d, request.digest_function) for d in request.digests]
            total = sum(d.size for d in digests)
            if total > MAX_BATCH_BYTES:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch of {total} bytes exceeds max_batch_total_size_bytes {MAX_BATCH_BYTES}",
                )
            response = re_pb2.BatchReadBlobsResponse()
            for proto, digest in zip(request.digests, digests, strict=True):
                try:
                    with instance.blobs.open(digest) as file:
                        data = file.read()
                    response.responses.add(digest=proto, data=data, status=_status(None))
                except BlobNotFound as error:
                    response.responses.add(digest=proto, status=_status(error))
            return response

    def GetTree(
        self, request: re_pb2.GetTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[re_pb2.GetTreeResponse]:
        """Every Directory below the root, breadth first, in pages.

        ``page_token`` is the number of directories already sent. Directories missing from
        the store are left out, as REAPI allows.
        """
        with grpc_errors(context, "GetTree"), self.streams.hold(context, "GetTree") as stream:
            instance = self.instances.get(request.instance_name)
            root = to_digest(request.root_digest, request.digest_function)
            page_size = request.page_size if request.page_size > 0 else GET_TREE_PAGE
            try:
                skip = int(request.page_token or "0")
            except ValueError:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "bad page_token") from None
            page: list[re_pb2.Directory] = []
            sent = 0
            queue = [root]
            seen = {root}
            while queue:
                digest = queue.pop(0)
                try:
                    if digest.size > MAX_DIRECTORY_BYTES:
                        raise DecodeError(f"{digest} is too large for a Directory")
                    with instance.blobs.open(digest) as file:
                        directory = re_pb2.Directory.FromString(file.read())
                except BlobNotFound:
                    if digest == root:
                        raise
                    continue
                except DecodeError as error:
                    if digest == root:
                        raise RequestError(
                            grpc.StatusCode.INVALID_ARGUMENT, f"{digest} is not a Directory"
                        ) from error
                    continue
                for child in directory.directories:
                    child_digest = Digest.from_proto(child.digest, root.function)
                    if child_digest not in seen:
                        seen.add(child_digest)
                        queue.append(child_digest)
                sent += 1
                if sent <= skip:
                    continue
                page.append(directory)
                if len(page) == page_size:
                    token = str(sent) if queue else ""
                    yield re_pb2.GetTreeResponse(directories=page, next_page_token=token)
                    stream.touch()
                    page = []
            if page or sent <= skip:
                yield re_pb2.GetTreeResponse(directories=page)
