"""Tests for casfs.digest: functions, validation, parsing and hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from casfs.digest import (
    MAX_SIZE,
    Digest,
    DigestBuilder,
    DigestError,
    DigestFunction,
    digest_file,
    new_hasher,
)

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
HASHABLE = [function for function in DigestFunction if function.hashable]


def test_function_numbers_match_reapi() -> None:
    assert {function.name: function.value for function in DigestFunction} == {
        "SHA256": 1,
        "SHA1": 2,
        "MD5": 3,
        "VSO": 4,
        "SHA384": 5,
        "SHA512": 6,
        "MURMUR3": 7,
        "SHA256TREE": 8,
        "BLAKE3": 9,
    }


@pytest.mark.parametrize(
    ("function", "length"),
    [
        (DigestFunction.SHA256, 64),
        (DigestFunction.SHA1, 40),
        (DigestFunction.MD5, 32),
        (DigestFunction.VSO, 66),
        (DigestFunction.SHA384, 96),
        (DigestFunction.SHA512, 128),
        (DigestFunction.MURMUR3, 32),
        (DigestFunction.SHA256TREE, 64),
        (DigestFunction.BLAKE3, 64),
    ],
)
def test_hex_length(function: DigestFunction, length: int) -> None:
    assert function.hex_length == length


def test_in_resource_name_only_for_new_functions() -> None:
    named = {function for function in DigestFunction if function.in_resource_name}
    assert named == {DigestFunction.SHA256TREE, DigestFunction.BLAKE3}


def test_hashable() -> None:
    assert set(HASHABLE) == {
        DigestFunction.SHA256,
        DigestFunction.SHA1,
        DigestFunction.MD5,
        DigestFunction.SHA384,
        DigestFunction.SHA512,
        DigestFunction.BLAKE3,
    }


@pytest.mark.parametrize("function", list(DigestFunction))
def test_from_name_round_trips_any_case(function: DigestFunction) -> None:
    assert function.name_lower == function.name.lower()
    assert DigestFunction.from_name(function.name_lower) is function
    assert DigestFunction.from_name(function.name) is function


@pytest.mark.parametrize("name", ["", "unknown", "sha-256", " sha256", "sha256 ", "BLA\u212aE3"])
def test_from_name_rejects(name: str) -> None:
    with pytest.raises(DigestError, match="unknown digest function"):
        DigestFunction.from_name(name)


@pytest.mark.parametrize(
    ("length", "function"),
    [
        (64, DigestFunction.SHA256),
        (40, DigestFunction.SHA1),
        (32, DigestFunction.MD5),
        (96, DigestFunction.SHA384),
        (128, DigestFunction.SHA512),
    ],
)
def test_from_hex_length(length: int, function: DigestFunction) -> None:
    assert DigestFunction.from_hex_length(length) is function


@pytest.mark.parametrize("length", [0, 1, 31, 63, 65, 66, 127, 129])
def test_from_hex_length_rejects(length: int) -> None:
    with pytest.raises(DigestError, match=f"{length} hex digits"):
        DigestFunction.from_hex_length(length)


def test_valid_digest() -> None:
    digest = Digest(EMPTY_SHA256, 0)
    assert digest.function is DigestFunction.SHA256
    assert str(digest) == f"{EMPTY_SHA256}/0"
    assert Digest("a" * 64, MAX_SIZE).size == 2**63 - 1


@pytest.mark.parametrize(
    ("hash_", "size", "function", "message"),
    [
        (EMPTY_SHA256.upper(), 0, DigestFunction.SHA256, "uppercase"),
        ("g" * 64, 0, DigestFunction.SHA256, "non-hex"),
        ("", 0, DigestFunction.SHA256, "non-hex"),
        (" " + "a" * 63, 0, DigestFunction.SHA256, "non-hex"),
        ("a" * 63, 0, DigestFunction.SHA256, "63 hex digits; sha256 needs 64"),
        ("a" * 64, 0, DigestFunction.SHA1, "64 hex digits; sha1 needs 40"),
        ("a" * 64, -1, DigestFunction.SHA256, "size is negative"),
        ("a" * 64, 2**63, DigestFunction.SHA256, "2\\*\\*63 or more"),
        pytest.param("a" * 64, 10**5000, DigestFunction.SHA256, "2\\*\\*63", id="10**5000"),
        ("a" * 64, True, DigestFunction.SHA256, "must be an int, not bool"),
        ("a" * 64, 1.0, DigestFunction.SHA256, "must be an int, not float"),
    ],
)
def test_invalid_digest(hash_: str, size: int, function: DigestFunction, message: str) -> None:
    with pytest.raises(DigestError, match=message):
        Digest(hash_, size, function)


def test_error_message_clips_long_hash() -> None:
    with pytest.raises(DigestError) as info:
        Digest("x" * 10_000, 0)
    assert len(str(info.value)) < 200
    assert "10000 chars" in str(info.value)


def test_digest_is_frozen() -> None:
    digest = Digest(EMPTY_SHA256, 0)
    with pytest.raises(AttributeError):
        digest.size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "size"), [(f"{EMPTY_SHA256}/0", 0), (f"{EMPTY_SHA256}/9223372036854775807", MAX_SIZE)]
)
def test_parse(text: str, size: int) -> None:
    assert Digest.parse(text) == Digest(EMPTY_SHA256, size, DigestFunction.SHA256)


def test_parse_with_function() -> None:
    digest = Digest.parse(f"{EMPTY_BLAKE3}/0", DigestFunction.BLAKE3)
    assert digest == Digest(EMPTY_BLAKE3, 0, DigestFunction.BLAKE3)
    with pytest.raises(DigestError, match="sha1 needs 40"):
        Digest.parse(f"{EMPTY_SHA256}/0", DigestFunction.SHA1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (EMPTY_SHA256, "form <hash>/<size>"),
        (f"{EMPTY_SHA256}:5", "form <hash>/<size>"),
        (f"{EMPTY_SHA256}/", "size ''"),
        (f"{EMPTY_SHA256}/-1", "size '-1'"),
        (f"{EMPTY_SHA256}/+5", "size '\\+5'"),
        (f"{EMPTY_SHA256}/05", "size '05'"),
        (f"{EMPTY_SHA256}/00", "size '00'"),
        (f"{EMPTY_SHA256}/ 5", "size ' 5'"),
        (f"{EMPTY_SHA256}/5 ", "size '5 '"),
        (f"{EMPTY_SHA256}/1_0", "size '1_0'"),
        (f"{EMPTY_SHA256}/\u0665", "size"),  # ARABIC-INDIC DIGIT FIVE
        (f"{EMPTY_SHA256}/0x10", "size '0x10'"),
        (f"{EMPTY_SHA256}/1/2", "size '1/2'"),
        (f"{EMPTY_SHA256}/9223372036854775808", "size"),
        (f"{EMPTY_SHA256}/{'9' * 5000}", "size"),
        (f"{EMPTY_SHA256.upper()}/0", "uppercase"),
        (f"/{'0'}", "non-hex"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(DigestError, match=message):
        Digest.parse(text)


@given(st.text(), st.none() | st.sampled_from(DigestFunction))
def test_parse_arbitrary_text_raises_only_digest_error(
    text: str, function: DigestFunction | None
) -> None:
    try:
        digest = Digest.parse(text, function)
    except DigestError:
        return
    assert str(digest) == text


@st.composite
def digests(draw: st.DrawFn) -> Digest:
    """Random valid digests of any function."""
    function = draw(st.sampled_from(DigestFunction))
    hash_ = draw(
        st.text("0123456789abcdef", min_size=function.hex_length, max_size=function.hex_length)
    )
    return Digest(hash_, draw(st.integers(0, MAX_SIZE)), function)


@given(digests())
def test_str_parse_round_trip(digest: Digest) -> None:
    assert Digest.parse(str(digest), digest.function) == digest


def test_known_answers() -> None:
    assert Digest.empty() == Digest(EMPTY_SHA256, 0, DigestFunction.SHA256)
    assert Digest.empty(DigestFunction.BLAKE3) == Digest(EMPTY_BLAKE3, 0, DigestFunction.BLAKE3)
    assert Digest.of_bytes(b"abc").hash == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("function", HASHABLE)
def test_of_bytes_matches_reference(function: DigestFunction) -> None:
    data = b"casfs" * 1000
    reference = (
        blake3.blake3(data)
        if function is DigestFunction.BLAKE3
        else hashlib.new(function.name_lower, data)
    )
    assert Digest.of_bytes(data, function) == Digest(reference.hexdigest(), 5000, function)


@pytest.mark.parametrize(
    "function", [function for function in DigestFunction if not function.hashable]
)
def test_unhashable_functions(function: DigestFunction) -> None:
    with pytest.raises(DigestError, match=f"cannot compute {function.name_lower}"):
        new_hasher(function)
    with pytest.raises(DigestError):
        DigestBuilder(function)


@pytest.mark.parametrize("function", HASHABLE)
def test_builder_streams(function: DigestFunction) -> None:
    data = os.urandom(10_000)
    builder = DigestBuilder(function)
    builder.update(data[:3])
    builder.update(memoryview(data)[3:5000])
    assert builder.size == 5000
    assert builder.digest() == Digest.of_bytes(data[:5000], function)
    builder.update(data[5000:])
    assert builder.size == 10_000
    assert builder.digest() == Digest.of_bytes(data, function)


def test_builder_counts_bytes_of_wide_memoryview() -> None:
    builder = DigestBuilder()
    builder.update(memoryview(b"12345678").cast("I"))
    assert builder.size == 8
    assert builder.digest() == Digest.of_bytes(b"12345678")


@pytest.mark.parametrize("function", HASHABLE)
def test_digest_file(tmp_path: Path, function: DigestFunction) -> None:
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = Digest.of_bytes(data, function)
    assert digest_file(path, function) == expected
    assert digest_file(str(path), function, chunk_size=4096 + 7) == expected


def test_digest_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    assert digest_file(path, DigestFunction.BLAKE3) == Digest.empty(DigestFunction.BLAKE3)


def test_digest_file_rejects_bad_chunk_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        digest_file(tmp_path, chunk_size=0)


def test_proto_round_trip() -> None:
    from casfs._proto import remote_execution_pb2

    digest = Digest.of_bytes(b"hello", DigestFunction.BLAKE3)
    message = digest.to_proto()
    assert isinstance(message, remote_execution_pb2.Digest)
    assert (message.hash, message.size_bytes) == (digest.hash, 5)
    assert Digest.from_proto(message, DigestFunction.BLAKE3) == digest
    assert Digest.from_proto(Digest.empty().to_proto()) == Digest.empty()


def test_from_proto_validates() -> None:
    from casfs._proto import remote_execution_pb2

    with pytest.raises(DigestError, match="negative"):
        Digest.from_proto(remote_execution_pb2.Digest(hash=EMPTY_SHA256, size_bytes=-1))
    with pytest.raises(DigestError, match="non-hex"):
        Digest.from_proto(remote_execution_pb2.Digest(size_bytes=1))
