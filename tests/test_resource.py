"""Tests for casfs.resource: the REAPI ByteStream resource-name grammar."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from casfs.digest import MAX_SIZE, Digest, DigestError, DigestFunction
from casfs.resource import (
    RESERVED,
    BlobName,
    Compressor,
    ResourceNameError,
    blob_path,
    instance_path,
    parse_read_name,
    parse_write_name,
    validate_instance_name,
)

SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
UUID = "3e2c5a4e-0f4f-4b59-9d3c-6c1b1f1ad6a2"
D_SHA256 = Digest(SHA256, 0)
D_BLAKE3 = Digest(BLAKE3, 0, DigestFunction.BLAKE3)


def test_reserved_words() -> None:
    assert {
        "blobs",
        "uploads",
        "compressed-blobs",
        "actions",
        "actionResults",
        "operations",
        "capabilities",
    } == RESERVED


def test_compressor_numbers_and_names() -> None:
    assert [(c.name_lower, c.value) for c in Compressor] == [
        ("identity", 0),
        ("zstd", 1),
        ("deflate", 2),
        ("brotli", 3),
    ]
    assert Compressor.from_name("zstd") is Compressor.ZSTD
    assert Compressor.from_name("Brotli") is Compressor.BROTLI


@pytest.mark.parametrize("name", ["", "lz4", "gzip", "zstd "])
def test_compressor_from_name_rejects(name: str) -> None:
    with pytest.raises(ResourceNameError, match="unknown compressor"):
        Compressor.from_name(name)


def test_empty_instance() -> None:
    name = f"blobs/{SHA256}/0"
    assert parse_read_name(name) == BlobName("", D_SHA256)
    assert BlobName("", D_SHA256).read_name() == name


def test_nested_instance() -> None:
    name = f"a/b/c/blobs/{SHA256}/0"
    parsed = parse_read_name(name)
    assert parsed == BlobName("a/b/c", D_SHA256)
    assert parsed.read_name() == name


def test_blake3_segment() -> None:
    name = f"main/blobs/blake3/{BLAKE3}/0"
    assert parse_read_name(name) == BlobName("main", D_BLAKE3)
    assert BlobName("main", D_BLAKE3).read_name() == name


def test_sha256tree_segment() -> None:
    digest = Digest(SHA256, 7, DigestFunction.SHA256TREE)
    assert blob_path(digest) == f"sha256tree/{SHA256}/7"
    assert parse_read_name(f"blobs/sha256tree/{SHA256}/7") == BlobName("", digest)


def test_hash_without_segment_is_inferred_legacy() -> None:
    assert parse_read_name(f"blobs/{BLAKE3}/0").digest.function is DigestFunction.SHA256


@pytest.mark.parametrize(
    ("hash_", "function"),
    [
        ("a" * 40, DigestFunction.SHA1),
        ("a" * 32, DigestFunction.MD5),
        ("a" * 96, DigestFunction.SHA384),
        ("a" * 128, DigestFunction.SHA512),
    ],
)
def test_legacy_inference(hash_: str, function: DigestFunction) -> None:
    assert parse_read_name(f"i/blobs/{hash_}/12").digest == Digest(hash_, 12, function)


@pytest.mark.parametrize(
    "function", ["sha256", "sha1", "md5", "vso", "sha384", "sha512", "murmur3"]
)
def test_legacy_function_segment_rejected(function: str) -> None:
    with pytest.raises(ResourceNameError, match=f"digest function '{function}' must be omitted"):
        parse_read_name(f"blobs/{function}/{SHA256}/0")


def test_legacy_function_omitted_when_formatting() -> None:
    assert blob_path(Digest("a" * 32, 1, DigestFunction.MD5)) == f"{'a' * 32}/1"


def test_compressed_read() -> None:
    name = f"inst/compressed-blobs/zstd/blake3/{BLAKE3}/0"
    parsed = parse_read_name(name)
    assert parsed == BlobName("inst", D_BLAKE3, Compressor.ZSTD)
    assert parsed.read_name() == name


def test_compressed_write() -> None:
    name = f"inst/uploads/{UUID}/compressed-blobs/zstd/{SHA256}/0"
    parsed = parse_write_name(name)
    assert parsed == BlobName("inst", D_SHA256, Compressor.ZSTD, UUID)
    assert parsed.write_name() == name
    assert parsed.read_name() == f"inst/compressed-blobs/zstd/{SHA256}/0"


def test_plain_write_empty_instance() -> None:
    name = f"uploads/{UUID}/blobs/{SHA256}/0"
    assert parse_write_name(name) == BlobName("", D_SHA256, upload_id=UUID)
    assert BlobName("", D_SHA256, upload_id=UUID).write_name() == name


def test_metadata_kept() -> None:
    read = f"i/blobs/{SHA256}/0/some/meta.data"
    assert parse_read_name(read).metadata == "some/meta.data"
    assert parse_read_name(read).read_name() == read
    write = f"uploads/{UUID}/compressed-blobs/deflate/{SHA256}/0/x/blobs/.."
    parsed = parse_write_name(write)
    assert (parsed.compressor, parsed.metadata) == (Compressor.DEFLATE, "x/blobs/..")
    assert parsed.write_name() == write


def test_write_name_needs_upload_id() -> None:
    with pytest.raises(ValueError, match="upload_id"):
        BlobName("i", D_SHA256).write_name()


def test_instance_path() -> None:
    assert instance_path("") == ""
    assert instance_path("a/b") == "a/b/"


@pytest.mark.parametrize("instance", ["", "main", "a/b/c", "Blobs", "blobs-x", ".a", "a.."])
def test_validate_instance_name_accepts(instance: str) -> None:
    validate_instance_name(instance)


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ("blobs", "reserved word 'blobs'"),
        ("a/uploads", "reserved word 'uploads'"),
        ("a/compressed-blobs/b", "reserved word"),
        ("actionResults", "reserved word"),
        ("a//b", "empty path segment"),
        ("/a", "empty path segment"),
        ("a/", "empty path segment"),
        (".", "'.' used"),
        ("a/../b", "'..' used"),
        ("a\0b", "NUL"),
    ],
)
def test_invalid_instance_rejected_on_format(instance: str, message: str) -> None:
    with pytest.raises(ResourceNameError, match=message):
        validate_instance_name(instance)
    with pytest.raises(ResourceNameError, match=message):
        BlobName(instance, D_SHA256).read_name()


@pytest.mark.parametrize("upload_id", ["", "a/b", "blobs", "uploads", "a\0"])
def test_invalid_upload_id(upload_id: str) -> None:
    with pytest.raises(ResourceNameError, match="upload id"):
        BlobName("", D_SHA256, upload_id=upload_id)


@pytest.mark.parametrize("metadata", ["/x", "x/", "a//b", "a\0"])
def test_invalid_metadata(metadata: str) -> None:
    with pytest.raises(ResourceNameError, match="metadata"):
        BlobName("", D_SHA256, metadata=metadata)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty resource name"),
        (f"/blobs/{SHA256}/0", "empty path segment"),
        (f"a//blobs/{SHA256}/0", "empty path segment"),
        (f"blobs/{SHA256}/0/", "empty path segment"),
        (f"blobs/{SHA256}//0", "empty path segment"),
        (f"blobs/{SHA256}/0\0", "NUL"),
        (f"main/{SHA256}/0", "no 'blobs'"),
        (f"./blobs/{SHA256}/0", "'.' used"),
        (f"a/../blobs/{SHA256}/0", "'..' used"),
        (f"uploads/{UUID}/blobs/{SHA256}/0", "found 'uploads'"),
        (f"actions/{SHA256}/0", "found 'actions'"),
        ("blobs", "missing hash"),
        ("blobs/blake3", "missing hash"),
        (f"blobs/{SHA256}", "missing size"),
        (f"blobs/{SHA256.upper()}/0", "uppercase"),
        (f"blobs/{'g' * 64}/0", "non-hex"),
        (f"blobs/{'a' * 63}/0", "63 hex digits"),
        (f"blobs/{'a' * 66}/0", "66 hex digits"),
        (f"blobs/blake3/{'a' * 40}/0", "blake3 needs 64"),
        (f"blobs/{SHA256}/-1", "size '-1'"),
        (f"blobs/{SHA256}/+1", "size '\\+1'"),
        (f"blobs/{SHA256}/01", "size '01'"),
        (f"blobs/{SHA256}/{2**63}", "size"),
        (f"blobs/{SHA256}/{MAX_SIZE}0", "size"),
        ("compressed-blobs", "missing compressor"),
        (f"compressed-blobs/{SHA256}/0", "compressor 'e3b0"),
        (f"compressed-blobs/identity/{SHA256}/0", "compressor 'identity'"),
        (f"compressed-blobs/ZSTD/{SHA256}/0", "compressor 'ZSTD'"),
        (f"compressed-blobs/lz4/{SHA256}/0", "compressor 'lz4'"),
        (f"compressed-blobs/zstd/{SHA256}", "missing size"),
    ],
)
def test_parse_read_name_rejects(name: str, message: str) -> None:
    with pytest.raises(ResourceNameError, match=message):
        parse_read_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (f"blobs/{SHA256}/0", "does not have 'uploads'"),
        (f"i/compressed-blobs/zstd/{SHA256}/0", "does not have 'uploads'"),
        ("uploads", "missing upload id"),
        (f"uploads/blobs/{SHA256}/0", "missing upload id before 'blobs'"),
        (f"uploads/compressed-blobs/zstd/{SHA256}/0", "missing upload id"),
        (f"uploads/{UUID}", "missing 'blobs' or 'compressed-blobs'"),
        (f"uploads/{UUID}/{SHA256}/0", "expected 'blobs' or 'compressed-blobs'"),
        (f"uploads/{UUID}/blobs/sha256/{SHA256}/0", "must be omitted"),
        (f"uploads/{UUID}/blobs/{SHA256}/0/", "empty path segment"),
        (f"x/uploads/{UUID}/compressed-blobs/identity/{SHA256}/0", "compressor"),
    ],
)
def test_parse_write_name_rejects(name: str, message: str) -> None:
    with pytest.raises(ResourceNameError, match=message):
        parse_write_name(name)


def test_long_names() -> None:
    instance = "/".join(["segment"] * 1250)  # 9999 characters
    name = f"{instance}/blobs/{SHA256}/0"
    assert len(name) > 10_000
    assert parse_read_name(name) == BlobName(instance, D_SHA256)

    garbage = "x" * 10_000
    with pytest.raises(ResourceNameError) as info:
        parse_read_name(garbage)
    message = str(info.value)
    assert len(message) < 300
    assert "10000 chars" in message


# Property-based tests.

_SEGMENT_TEXT = st.text(st.characters(exclude_characters="/\0"), min_size=1)
_PLAUSIBLE = [
    *sorted(RESERVED),
    "main",
    "a",
    "Blobs",
    ".",
    "..",
    "",
    "\0",
    UUID,
    SHA256,
    SHA256.upper(),
    BLAKE3[:40],
    "a" * 32,
    "a" * 128,
    "0",
    "5",
    "-1",
    "+1",
    "07",
    str(MAX_SIZE),
    str(MAX_SIZE + 1),
    *(function.name_lower for function in DigestFunction),
    *(compressor.name_lower for compressor in Compressor),
]


def _conveyable(function: DigestFunction) -> bool:
    """Whether a resource name identifies ``function``, by segment or by hash length."""
    if function.in_resource_name:
        return True
    try:
        return DigestFunction.from_hex_length(function.hex_length) is function
    except DigestError:
        return False


_ROUND_TRIP_FUNCTIONS = [function for function in DigestFunction if _conveyable(function)]

instance_segments = (st.sampled_from(["main", "a", "ci", "Blobs", "x.y"]) | _SEGMENT_TEXT).filter(
    lambda segment: segment not in RESERVED and segment not in (".", "..")
)
instances = st.lists(instance_segments, max_size=4).map("/".join)
metadata = st.lists(_SEGMENT_TEXT, max_size=3).map("/".join)
upload_ids = st.none() | st.uuids(version=4).map(str) | instance_segments


@st.composite
def digests(draw: st.DrawFn) -> Digest:
    """Random digests whose function a resource name can convey."""
    function = draw(st.sampled_from(_ROUND_TRIP_FUNCTIONS))
    length = function.hex_length
    hash_ = draw(st.text("0123456789abcdef", min_size=length, max_size=length))
    return Digest(hash_, draw(st.integers(0, MAX_SIZE)), function)


blob_names = st.builds(
    BlobName,
    instance=instances,
    digest=digests(),
    compressor=st.sampled_from(Compressor),
    upload_id=upload_ids,
    metadata=metadata,
)


def test_round_trip_functions() -> None:
    assert set(_ROUND_TRIP_FUNCTIONS) == {
        DigestFunction.SHA256,
        DigestFunction.SHA1,
        DigestFunction.MD5,
        DigestFunction.SHA384,
        DigestFunction.SHA512,
        DigestFunction.SHA256TREE,
        DigestFunction.BLAKE3,
    }


@given(blob_names)
def test_format_parse_round_trip(blob: BlobName) -> None:
    read = blob.read_name()
    assert parse_read_name(read) == dataclasses.replace(blob, upload_id=None)
    if blob.upload_id is None:
        with pytest.raises(ValueError, match="upload_id"):
            blob.write_name()
    else:
        assert parse_write_name(blob.write_name()) == blob


@given(st.text())
@example(f"blobs/{SHA256}/\u0665")
@example(f"blobs/{SHA256}/{'9' * 5000}")
def test_parse_arbitrary_text(name: str) -> None:
    _assert_parse_is_total(name)


@given(st.lists(st.sampled_from(_PLAUSIBLE) | _SEGMENT_TEXT, max_size=10).map("/".join))
def test_parse_plausible_segments(name: str) -> None:
    _assert_parse_is_total(name)


def _assert_parse_is_total(name: str) -> None:
    """Both parsers either raise ResourceNameError or return a name that formats back."""
    try:
        read = parse_read_name(name)
    except ResourceNameError:
        pass
    else:
        assert read.upload_id is None
        assert read.read_name() == name
    try:
        write = parse_write_name(name)
    except ResourceNameError:
        pass
    else:
        assert write.write_name() == name


def test_uuid4_upload_ids_accepted() -> None:
    upload_id = str(uuid.uuid4())
    assert parse_write_name(f"uploads/{upload_id}/blobs/{SHA256}/0").upload_id == upload_id
