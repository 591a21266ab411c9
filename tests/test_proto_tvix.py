"""casfs's tvix castore protos against the wire shapes of upstream tvix.castore.v1.

The shapes are copied by hand from issue 19 (the BlobService as first published) and from
tvix's castore/protos/ (the later fields). Changing any of them breaks interoperability
with tvix-store and its successors. Messages are also encoded here by hand, byte by byte,
so that a type change that keeps the field number (bytes -> string, uint64 -> fixed64)
fails too.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from casfs._proto.tvix import castore_pb2, rpc_blobstore_pb2, rpc_directory_pb2

PACKAGE = "tvix.castore.v1"
BYTES = FieldDescriptor.TYPE_BYTES
BOOL = FieldDescriptor.TYPE_BOOL
UINT64 = FieldDescriptor.TYPE_UINT64
MESSAGE = FieldDescriptor.TYPE_MESSAGE

# (service, method, request, response, client streaming, server streaming)
METHODS = [
    ("BlobService", "Stat", "StatBlobRequest", "StatBlobResponse", False, False),
    ("BlobService", "Read", "ReadBlobRequest", "BlobChunk", False, True),
    ("BlobService", "Put", "BlobChunk", "PutBlobResponse", True, False),
    ("DirectoryService", "Get", "GetDirectoryRequest", "Directory", False, True),
    ("DirectoryService", "Put", "Directory", "PutDirectoryResponse", True, False),
]

# (message, field, number, type); the first five rows are the BlobService.
FIELDS: list[tuple[type[Message], str, int, int]] = [
    (rpc_blobstore_pb2.StatBlobRequest, "digest", 1, BYTES),
    (rpc_blobstore_pb2.ReadBlobRequest, "digest", 1, BYTES),
    (rpc_blobstore_pb2.BlobChunk, "data", 1, BYTES),
    (rpc_blobstore_pb2.PutBlobResponse, "digest", 1, BYTES),
    (rpc_blobstore_pb2.StatBlobRequest, "send_chunks", 2, BOOL),
    (rpc_blobstore_pb2.StatBlobRequest, "send_bao", 3, BOOL),
    (rpc_blobstore_pb2.StatBlobResponse, "chunks", 2, MESSAGE),
    (rpc_blobstore_pb2.StatBlobResponse, "bao", 3, BYTES),
    (rpc_blobstore_pb2.StatBlobResponse.ChunkMeta, "digest", 1, BYTES),
    (rpc_blobstore_pb2.StatBlobResponse.ChunkMeta, "size", 2, UINT64),
    (rpc_directory_pb2.GetDirectoryRequest, "digest", 1, BYTES),
    (rpc_directory_pb2.GetDirectoryRequest, "recursive", 2, BOOL),
    (rpc_directory_pb2.PutDirectoryResponse, "root_digest", 1, BYTES),
    (castore_pb2.Directory, "directories", 1, MESSAGE),
    (castore_pb2.Directory, "files", 2, MESSAGE),
    (castore_pb2.Directory, "symlinks", 3, MESSAGE),
    (castore_pb2.DirectoryNode, "name", 1, BYTES),
    (castore_pb2.DirectoryNode, "digest", 2, BYTES),
    (castore_pb2.DirectoryNode, "size", 3, UINT64),
    (castore_pb2.FileNode, "name", 1, BYTES),
    (castore_pb2.FileNode, "digest", 2, BYTES),
    (castore_pb2.FileNode, "size", 3, UINT64),
    (castore_pb2.FileNode, "executable", 4, BOOL),
    (castore_pb2.SymlinkNode, "name", 1, BYTES),
    (castore_pb2.SymlinkNode, "target", 2, BYTES),
    (castore_pb2.Node, "directory", 1, MESSAGE),
    (castore_pb2.Node, "file", 2, MESSAGE),
    (castore_pb2.Node, "symlink", 3, MESSAGE),
]

# Messages with exactly these fields and no others.
FIELD_SETS: list[tuple[type[Message], set[str]]] = [
    (rpc_blobstore_pb2.BlobChunk, {"data"}),
    (rpc_blobstore_pb2.ReadBlobRequest, {"digest"}),
    (rpc_blobstore_pb2.PutBlobResponse, {"digest"}),
    (rpc_blobstore_pb2.StatBlobRequest, {"digest", "send_chunks", "send_bao"}),
    (rpc_blobstore_pb2.StatBlobResponse, {"chunks", "bao"}),
    (castore_pb2.Directory, {"directories", "files", "symlinks"}),
]


@pytest.mark.parametrize(("service", "method", "request_", "response", "cs", "ss"), METHODS)
def test_methods(
    service: str, method: str, request_: str, response: str, cs: bool, ss: bool
) -> None:
    module = rpc_blobstore_pb2 if service == "BlobService" else rpc_directory_pb2
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"{PACKAGE}.{service}"
    rpc = descriptor.methods_by_name[method]
    assert rpc.input_type.full_name == f"{PACKAGE}.{request_}"
    assert rpc.output_type.full_name == f"{PACKAGE}.{response}"
    assert (rpc.client_streaming, rpc.server_streaming) == (cs, ss)


@pytest.mark.parametrize(("message", "field", "number", "type_"), FIELDS)
def test_fields(message: type[Message], field: str, number: int, type_: int) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    assert (descriptor.number, descriptor.type) == (number, type_)
    assert message.DESCRIPTOR.full_name.startswith(f"{PACKAGE}.")


@pytest.mark.parametrize(("message", "fields"), FIELD_SETS)
def test_no_other_fields(message: type[Message], fields: set[str]) -> None:
    assert set(message.DESCRIPTOR.fields_by_name) == fields


def test_repeated_fields() -> None:
    repeated = {
        (m.DESCRIPTOR.name, f.name)
        for m in (castore_pb2.Directory, rpc_blobstore_pb2.StatBlobResponse)
        for f in m.DESCRIPTOR.fields
        if f.is_repeated
    }
    assert repeated == {
        ("Directory", "directories"),
        ("Directory", "files"),
        ("Directory", "symlinks"),
        ("StatBlobResponse", "chunks"),
    }


def test_first_published_blobmeta_is_the_empty_stat_answer() -> None:
    """The issue's ``BlobMeta {}`` and today's StatBlobResponse share one encoding: a
    plain existence answer is the empty message either way."""
    assert rpc_blobstore_pb2.StatBlobResponse().SerializeToString() == b""


def test_encodings_by_hand() -> None:
    digest = bytes(range(32))
    assert rpc_blobstore_pb2.ReadBlobRequest(digest=digest).SerializeToString() == (
        b"\x0a\x20" + digest
    )
    assert rpc_blobstore_pb2.BlobChunk(data=b"abc").SerializeToString() == b"\x0a\x03abc"
    stat = rpc_blobstore_pb2.StatBlobRequest(digest=digest, send_chunks=True)
    assert stat.SerializeToString() == b"\x0a\x20" + digest + b"\x10\x01"
    chunk = rpc_blobstore_pb2.StatBlobResponse.ChunkMeta(digest=digest, size=300)
    assert chunk.SerializeToString() == b"\x0a\x20" + digest + b"\x10\xac\x02"
    file = castore_pb2.FileNode(name=b"a", digest=digest, size=2**40, executable=True)
    assert file.SerializeToString() == (
        b"\x0a\x01a\x12\x20" + digest + b"\x18\x80\x80\x80\x80\x80\x20\x20\x01"
    )
