"""REAPI wire compression: compressing streams, and decompressing with bounded output.

Decompression never yields more than the caller's limit, whatever the input claims: a
zstd frame declaring more content than the limit, or a window larger than
``MAX_WINDOW``, is refused before anything is allocated for it, and a frame that yields
more (a decompression bomb of RLE blocks packs 128 KiB into 4 bytes) is stopped at the
limit. So memory is bounded by the limit the caller gives (the digest's size), never by
the sender. Every malformed or oversized input raises ``CompressionError``; nothing is
retried or partially returned after it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import IO, BinaryIO, cast

import zstandard

from casfs.resource import Compressor

# The largest zstd window accepted (levels up to 19 use at most 8 MiB; --long and the
# ultra levels more). A frame asking for more is refused: its window is allocated up front.
MAX_WINDOW = 32 << 20


class CompressionError(ValueError):
    """The compressor is not supported, or the data is not valid for it, or it decompresses
    to more than allowed."""


def _zstd() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)


class _Sink:
    """Collects a zstd writer's output and stops it at ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        self.total += len(data)
        if self.total > self.limit:
            raise CompressionError(f"decompresses to more than {self.limit} bytes")
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class Decompressor:
    """Undoes one compressed stream fed in pieces; all pieces together yield at most
    ``limit`` bytes (more raises ``CompressionError``, and so does invalid data)."""

    def __init__(self, compressor: Compressor, limit: int) -> None:
        if compressor not in (Compressor.IDENTITY, Compressor.ZSTD, Compressor.DEFLATE):
            raise CompressionError(f"compressor {compressor.name_lower} is not supported")
        self.compressor = compressor
        self.limit = limit
        self.produced = 0
        self._sink = _Sink(limit)
        self._zstd: zstandard.ZstdDecompressionWriter | None = None
        self._inflate = zlib.decompressobj(wbits=-15)  # raw RFC 1951, as REAPI says

    def decompress(self, data: bytes) -> bytes:
        """The bytes ``data`` completes."""
        if self.compressor is Compressor.IDENTITY:
            out = data
        elif self.compressor is Compressor.ZSTD:
            out = self._unzstd(data)
        else:
            out = self._deflate(data, final=False)
        self.produced += len(out)
        if self.produced > self.limit:
            raise CompressionError(f"decompresses to more than {self.limit} bytes")
        return out

    def flush(self) -> bytes:
        """What is left once all the data has been fed."""
        if self.compressor is not Compressor.DEFLATE:
            return b""
        out = self._deflate(b"", final=True)
        self.produced += len(out)
        return out

    def _unzstd(self, data: bytes) -> bytes:
        if self._zstd is None:
            self._check_frame_header(data)
            sink = cast(IO[bytes], self._sink)  # it needs only write()
            self._zstd = _zstd().stream_writer(sink, write_size=1 << 17, closefd=False)
        try:
            self._zstd.write(data)
        except zstandard.ZstdError as error:
            raise CompressionError(f"not valid zstd: {error}") from None
        return self._sink.take()

    def _check_frame_header(self, data: bytes) -> None:
        """Refuse a first frame that declares more content than the limit."""
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            return  # too short to tell, or not zstd: decoding says which
        if declared > self.limit:  # -1: not declared
            raise CompressionError(
                f"a zstd frame declares {declared} bytes, more than {self.limit}"
            )

    def _deflate(self, data: bytes, *, final: bool) -> bytes:
        room = self.limit - self.produced + 1  # one byte past the limit shows it is passed
        try:
            out = self._inflate.decompress(data, room) if data else b""
            if self._inflate.unconsumed_tail:
                raise CompressionError(f"decompresses to more than {self.limit} bytes")
            if final:
                out += self._inflate.flush(room - len(out))
        except zlib.error as error:
            raise CompressionError(f"not valid deflate: {error}") from None
        return out


def decompress(compressor: Compressor, data: bytes, limit: int) -> bytes:
    """``data`` decompressed whole, at most ``limit`` bytes (``CompressionError``)."""
    decompressor = Decompressor(compressor, limit)
    out = decompressor.decompress(data)
    return out + decompressor.flush()


class _ZstdReader:
    """``read(n)`` of a zstd stream, with ``ZstdError`` as ``CompressionError``."""

    def __init__(self, source: BinaryIO) -> None:
        self._reader = _zstd().stream_reader(source, read_across_frames=True, closefd=False)

    def read(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as error:
            raise CompressionError(f"not valid zstd: {error}") from None


def zstd_reader(source: BinaryIO) -> _ZstdReader:
    """A reader of ``source`` decompressed: each ``read(n)`` yields at most ``n`` bytes, so
    the caller bounds memory and counts the total itself."""
    return _ZstdReader(source)


def compressor(compressor: Compressor) -> Callable[[bytes, bool], bytes]:
    """``(chunk, final) -> bytes`` compressing a stream (zstd level 1, raw deflate level 1;
    the fastest, as the wire is rarely slower than they are)."""
    if compressor is Compressor.IDENTITY:
        return lambda data, final: data
    if compressor is Compressor.ZSTD:
        zstd = zstandard.ZstdCompressor(level=1).compressobj()
        return lambda data, final: zstd.compress(data) + (zstd.flush() if final else b"")
    if compressor is Compressor.DEFLATE:
        deflate = zlib.compressobj(1, wbits=-15)
        return lambda data, final: deflate.compress(data) + (deflate.flush() if final else b"")
    raise CompressionError(f"compressor {compressor.name_lower} is not supported")

