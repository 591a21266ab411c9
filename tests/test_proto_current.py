"""The generated code in casfs/_proto must match protos/, and stay wire-compatible."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
from types import ModuleType

import pytest
from google.protobuf.message import Message

from casfs._proto import (
    bytestream_pb2,
    remote_asset_pb2,
    remote_execution_pb2,
    semver_pb2,
    status_pb2,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATE_SCRIPT = REPO_ROOT / "protos" / "generate.py"
COMMITTED_DIR = REPO_ROOT / "casfs" / "_proto"
HAND_WRITTEN = {"__init__.py"}


def _load_generate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("casfs_protos_generate", GENERATE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(directory: pathlib.Path) -> set[str]:
    """Generated files below ``directory`` (tvix's in tvix/), as relative paths."""
    return {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.name not in HAND_WRITTEN and p.suffix in {".py", ".pyi"}
    }


def test_generated_code_is_current(tmp_path: pathlib.Path) -> None:
    generate = _load_generate_module().generate
    generate(tmp_path)
    fresh_dir = tmp_path / "casfs" / "_proto"

    fresh = _files(fresh_dir)
    committed = _files(COMMITTED_DIR)
    tools = importlib.metadata.version("grpcio-tools")
    hint = f"casfs/_proto is stale: run `make proto` (generated with grpcio-tools {tools})"

    assert fresh, "protos/generate.py produced no files"
    assert not fresh - committed, f"{hint}; missing: {sorted(fresh - committed)}"
    assert not committed - fresh, f"{hint}; extra: {sorted(committed - fresh)}"
    differing = sorted(
        name
        for name in fresh
        if (fresh_dir / name).read_bytes() != (COMMITTED_DIR / name).read_bytes()
    )
    assert not differing, f"{hint}; differs: {differing}"


# Wire facts copied by hand from upstream (bazelbuild/remote-apis and
# googleapis/googleapis). Changing any of these breaks interoperability.
FULL_NAMES: list[tuple[object, str]] = [
    (remote_execution_pb2.Digest.DESCRIPTOR, "build.bazel.remote.execution.v2.Digest"),
    (
        remote_execution_pb2.BatchUpdateBlobsRequest.Request.DESCRIPTOR,
        "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request",
    ),
    (
        remote_execution_pb2.RequestMetadata.DESCRIPTOR,
        "build.bazel.remote.execution.v2.RequestMetadata",
    ),
    (status_pb2.Status.DESCRIPTOR, "google.rpc.Status"),
    (semver_pb2.SemVer.DESCRIPTOR, "build.bazel.semver.SemVer"),
    (bytestream_pb2.ReadRequest.DESCRIPTOR, "google.bytestream.ReadRequest"),
    (
        bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"],
        "google.bytestream.ByteStream",
    ),
    (
        remote_execution_pb2.DESCRIPTOR.services_by_name["ContentAddressableStorage"],
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
    ),
    (
        remote_execution_pb2.DESCRIPTOR.services_by_name["ActionCache"],
        "build.bazel.remote.execution.v2.ActionCache",
    ),
    (
        remote_execution_pb2.DESCRIPTOR.services_by_name["Capabilities"],
        "build.bazel.remote.execution.v2.Capabilities",
    ),
    (remote_asset_pb2.DESCRIPTOR.services_by_name["Fetch"], "build.bazel.remote.asset.v1.Fetch"),
    (remote_asset_pb2.DESCRIPTOR.services_by_name["Push"], "build.bazel.remote.asset.v1.Push"),
    (remote_asset_pb2.Qualifier.DESCRIPTOR, "build.bazel.remote.asset.v1.Qualifier"),
    (
        remote_asset_pb2.FetchBlobResponse.DESCRIPTOR.fields_by_name["blob_digest"].message_type,
        "build.bazel.remote.execution.v2.Digest",
    ),
    (
        remote_asset_pb2.FetchBlobResponse.DESCRIPTOR.fields_by_name["status"].message_type,
        "google.rpc.Status",
    ),
    (
        remote_asset_pb2.PushBlobRequest.DESCRIPTOR.fields_by_name["expire_at"].message_type,
        "google.protobuf.Timestamp",
    ),
    (
        remote_asset_pb2.FetchBlobRequest.DESCRIPTOR.fields_by_name["timeout"].message_type,
        "google.protobuf.Duration",
    ),
    (
        remote_asset_pb2.FetchBlobRequest.DESCRIPTOR.fields_by_name["digest_function"].enum_type,
        "build.bazel.remote.execution.v2.DigestFunction.Value",
    ),
]

FIELD_NUMBERS: list[tuple[type[Message], str, int]] = [
    (remote_execution_pb2.Digest, "hash", 1),
    (remote_execution_pb2.Digest, "size_bytes", 2),
    (bytestream_pb2.ReadRequest, "resource_name", 1),
    (bytestream_pb2.ReadRequest, "read_offset", 2),
    (bytestream_pb2.ReadRequest, "read_limit", 3),
    (bytestream_pb2.ReadResponse, "data", 10),
    (bytestream_pb2.WriteRequest, "resource_name", 1),
    (bytestream_pb2.WriteRequest, "write_offset", 2),
    (bytestream_pb2.WriteRequest, "finish_write", 3),
    (bytestream_pb2.WriteRequest, "data", 10),
    (bytestream_pb2.WriteResponse, "committed_size", 1),
    (bytestream_pb2.QueryWriteStatusResponse, "complete", 2),
    (status_pb2.Status, "details", 3),
    (remote_execution_pb2.ServerCapabilities, "cache_capabilities", 1),
    (remote_execution_pb2.ServerCapabilities, "high_api_version", 5),
    (remote_execution_pb2.CacheCapabilities, "max_batch_total_size_bytes", 4),
    (remote_execution_pb2.CacheCapabilities, "supported_batch_update_compressors", 7),
    (remote_execution_pb2.CacheCapabilities, "max_cas_blob_size_bytes", 8),
    (remote_execution_pb2.BatchUpdateBlobsRequest, "digest_function", 5),
    (remote_execution_pb2.BatchUpdateBlobsRequest.Request, "compressor", 3),
    (remote_execution_pb2.BatchReadBlobsResponse.Response, "compressor", 4),
    (remote_execution_pb2.BatchReadBlobsResponse.Response, "status", 3),
    (remote_execution_pb2.FindMissingBlobsResponse, "missing_blob_digests", 2),
    (remote_execution_pb2.FileNode, "is_executable", 4),
    (remote_execution_pb2.FileNode, "node_properties", 6),
    (remote_execution_pb2.Directory, "node_properties", 5),
    (remote_execution_pb2.ActionResult, "output_symlinks", 12),
    (remote_execution_pb2.ExecutedActionMetadata, "virtual_execution_duration", 12),
    (remote_execution_pb2.OutputDirectory, "root_directory_digest", 5),
    (remote_asset_pb2.Qualifier, "name", 1),
    (remote_asset_pb2.Qualifier, "value", 2),
    *[
        (message, name, number)
        for message in (remote_asset_pb2.FetchBlobRequest, remote_asset_pb2.FetchDirectoryRequest)
        for name, number in [
            ("instance_name", 1),
            ("timeout", 2),
            ("oldest_content_accepted", 3),
            ("uris", 4),
            ("qualifiers", 5),
            ("digest_function", 6),
        ]
    ],
    *[
        (message, name, number)
        for message in (
            remote_asset_pb2.FetchBlobResponse,
            remote_asset_pb2.FetchDirectoryResponse,
        )
        for name, number in [
            ("status", 1),
            ("uri", 2),
            ("qualifiers", 3),
            ("expires_at", 4),
            ("digest_function", 6),
        ]
    ],
    (remote_asset_pb2.FetchBlobResponse, "blob_digest", 5),
    (remote_asset_pb2.FetchDirectoryResponse, "root_directory_digest", 5),
    *[
        (message, name, number)
        for message in (remote_asset_pb2.PushBlobRequest, remote_asset_pb2.PushDirectoryRequest)
        for name, number in [
            ("instance_name", 1),
            ("uris", 2),
            ("qualifiers", 3),
            ("expire_at", 4),
            ("references_blobs", 6),
            ("references_directories", 7),
            ("digest_function", 8),
        ]
    ],
    (remote_asset_pb2.PushBlobRequest, "blob_digest", 5),
    (remote_asset_pb2.PushDirectoryRequest, "root_directory_digest", 5),
]

ENUM_VALUES: list[tuple[int, int]] = [
    (remote_execution_pb2.DigestFunction.SHA256, 1),
    (remote_execution_pb2.DigestFunction.BLAKE3, 9),
    (remote_execution_pb2.DigestFunction.GITSHA1, 10),
    (remote_execution_pb2.Compressor.ZSTD, 1),
    (remote_execution_pb2.Compressor.BROTLI, 3),
    (remote_execution_pb2.SymlinkAbsolutePathStrategy.ALLOWED, 2),
]


@pytest.mark.parametrize(("descriptor", "full_name"), FULL_NAMES)
def test_full_names(descriptor: object, full_name: str) -> None:
    assert getattr(descriptor, "full_name", None) == full_name


@pytest.mark.parametrize(("message", "field", "number"), FIELD_NUMBERS)
def test_field_numbers(message: type[Message], field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


@pytest.mark.parametrize(("actual", "expected"), ENUM_VALUES)
def test_enum_values(actual: int, expected: int) -> None:
    assert actual == expected


def test_streaming_shapes() -> None:
    bytestream = bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"]
    read = bytestream.methods_by_name["Read"]
    write = bytestream.methods_by_name["Write"]
    assert (read.client_streaming, read.server_streaming) == (False, True)
    assert (write.client_streaming, write.server_streaming) == (True, False)
    cas = remote_execution_pb2.DESCRIPTOR.services_by_name["ContentAddressableStorage"]
    get_tree = cas.methods_by_name["GetTree"]
    assert (get_tree.client_streaming, get_tree.server_streaming) == (False, True)


def test_remote_asset_shapes() -> None:
    """Every Remote Asset method is unary, with upstream's request and response types."""
    methods = {
        ("Fetch", "FetchBlob"): ("FetchBlobRequest", "FetchBlobResponse"),
        ("Fetch", "FetchDirectory"): ("FetchDirectoryRequest", "FetchDirectoryResponse"),
        ("Push", "PushBlob"): ("PushBlobRequest", "PushBlobResponse"),
        ("Push", "PushDirectory"): ("PushDirectoryRequest", "PushDirectoryResponse"),
    }
    for (service, name), (request, response) in methods.items():
        method = remote_asset_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[name]
        assert (method.client_streaming, method.server_streaming) == (False, False)
        assert method.input_type.full_name == f"build.bazel.remote.asset.v1.{request}"
        assert method.output_type.full_name == f"build.bazel.remote.asset.v1.{response}"
    repeated = remote_asset_pb2.PushBlobRequest.DESCRIPTOR.fields_by_name["references_blobs"]
    assert repeated.is_repeated
