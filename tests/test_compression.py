"""casfs/compression.py: decompression never yields more than its limit, whatever the
input claims, and every bad input is a ``CompressionError``."""

from __future__ import annotations

import io
import os

import pytest
import zstandard

from casfs.compression import (
    MAX_WINDOW,
    CompressionError,
    Decompressor,
    compressor,
    decompress,
    zstd_reader,
)
from casfs.resource import Compressor
from tests.test_hostile import zstd_bomb

DATA = os.urandom(100_000) + bytes(3_000_000)
CODECS = [Compressor.IDENTITY, Compressor.ZSTD, Compressor.DEFLATE]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_in_pieces_and_whole(codec: Compressor) -> None:
    compress = compressor(codec)
    packed = compress(DATA[:50_000], False) + compress(DATA[50_000:], True)
    assert decompress(codec, packed, len(DATA)) == DATA
    undo = Decompressor(codec, len(DATA))
    pieces = [undo.decompress(packed[i : i + 999]) for i in range(0, len(packed), 999)]
    assert b"".join(pieces) + undo.flush() == DATA


@pytest.mark.parametrize("codec", CODECS)
def test_one_byte_past_the_limit_is_refused(codec: Compressor) -> None:
    packed = compressor(codec)(DATA, True)
    with pytest.raises(CompressionError, match="more than"):
        decompress(codec, packed, len(DATA) - 1)


def test_a_frame_declaring_more_than_the_limit_is_refused_before_decoding() -> None:
    with pytest.raises(CompressionError, match="declares 2147483648 bytes"):
        decompress(Compressor.ZSTD, zstd_bomb(2**31, 4), 1000)


def test_a_bomb_without_a_declared_size_stops_at_the_limit() -> None:
    bomb = zstd_bomb(2**31, 16 << 10)
    undeclared = bomb[:4] + bytes([0x00, 0x38]) + bomb[10:]  # no content size
    undo = Decompressor(Compressor.ZSTD, 1 << 20)
    with pytest.raises(CompressionError, match="more than 1048576"):
        undo.decompress(undeclared)
    assert undo.produced <= 1 << 20


def test_a_window_larger_than_allowed_is_refused() -> None:
    magic = (0xFD2FB528).to_bytes(4, "little")
    raw_block = (1 | 3 << 3).to_bytes(3, "little") + b"abc"  # the last block, raw, 3 bytes
    fits = magic + bytes([0x00, 15 << 3]) + raw_block  # a 32 MiB window
    assert decompress(Compressor.ZSTD, fits, 1000) == b"abc"
    too_large = magic + bytes([0x00, 16 << 3]) + raw_block  # 64 MiB
    assert MAX_WINDOW == 32 << 20
    with pytest.raises(CompressionError, match="memory"):
        decompress(Compressor.ZSTD, too_large, 1000)


@pytest.mark.parametrize(
    ("codec", "garbage"),
    [(Compressor.ZSTD, b"\x28\xb5\x2f\xfdjunk junk"), (Compressor.DEFLATE, b"\xff\xff\xff")],
)
def test_malformed_input_is_a_compression_error(codec: Compressor, garbage: bytes) -> None:
    with pytest.raises(CompressionError, match="not valid"):
        decompress(codec, garbage, 100)


def test_unsupported_compressors_are_refused() -> None:
    with pytest.raises(CompressionError, match="not supported"):
        Decompressor(Compressor.BROTLI, 10)
    with pytest.raises(CompressionError, match="not supported"):
        compressor(Compressor.BROTLI)


def test_the_reader_hands_out_at_most_what_is_asked() -> None:
    packed = zstandard.ZstdCompressor().compress(DATA)
    reader = zstd_reader(io.BytesIO(packed))
    out = bytearray()
    while chunk := reader.read(1 << 16):
        assert len(chunk) <= 1 << 16
        out += chunk
    assert out == DATA
    with pytest.raises(CompressionError):
        zstd_reader(io.BytesIO(b"\x28\xb5\x2f\xfdjunk junk")).read(100)
