"""``casfs serve``'s ByteStream Read through each of ``blobread``'s paths (ordinary; a
piece read ahead, buffered or by ``O_DIRECT``): the bytes of every range, cold and hot,
are exact, and a direct cold read leaves the page cache as it found it (checked with
util-linux's ``fincore``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstandard

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs.digest import Digest
from casfs.store import blobread
from tests.servers import CasfsServer
from tests.test_client_server import run_client
from tests.test_directio import _cached_pages

MIB = 1 << 20
SIZES = [0, 1, 4095, 4097, 5 * MIB + 123, 9 * MIB]


@pytest.fixture(scope="module", params=["off", "buffered", "direct"])
def stored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CasfsServer, dict]]:
    """One server (each cold-read path) holding a blob of each size; {size: (digest, bytes)}."""
    root = tmp_path_factory.mktemp("coldread")
    blobs: dict[int, tuple[Digest, bytes]] = {}
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CASFS_COLD_READ", request.param)
            server = stack.enter_context(CasfsServer(root / "store"))
        for size in SIZES:
            data = os.urandom(size)
            path = root / f"blob-{size}"
            path.write_bytes(data)
            digest = run_client(server.endpoint, lambda c, p=path: c.upload_file(p))
            blobs[size] = (digest, data)
        yield server, blobs


def _store_file(server: CasfsServer, digest: Digest) -> Path:
    return server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash


def _make_cold(path: Path) -> None:
    """Drop this one file's pages from the page cache (it is clean: fsynced on commit)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _make_hot(path: Path) -> None:
    path.read_bytes()


def _read(server: CasfsServer, name: str, offset: int = 0, limit: int = 0) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = bytestream_pb2_grpc.ByteStreamStub(channel)
        request = bytestream_pb2.ReadRequest(
            resource_name=name, read_offset=offset, read_limit=limit
        )
        return b"".join(response.data for response in stub.Read(request, timeout=60))


def _name(digest: Digest, compressed: bool = False) -> str:
    kind = "compressed-blobs/zstd" if compressed else "blobs"
    return f"main/{kind}/{digest.hash}/{digest.size}"


def _ranges(size: int) -> list[tuple[int, int]]:
    """(offset, limit) pairs: whole, odd offsets, odd lengths, crossing the 1 MiB pieces."""
    ranges = [(0, 0), (size, 0)]
    if size:
        ranges += [(1, 0), (size - 1, 0), (0, size - 1), (min(size, size // 2 + 3), 0)]
    if size > 2 * MIB:
        ranges += [(4095, MIB + 7), (MIB - 1, 2 * MIB + 2), (4096 * 3, size - 4096 * 3 - 5)]
    return ranges


@pytest.mark.parametrize("temperature", ["cold", "hot"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_ranges_are_exact(stored: tuple[CasfsServer, dict], size: int, temperature: str) -> None:
    server, blobs = stored
    digest, data = blobs[size]
    for offset, limit in _ranges(size):
        if size:
            (_make_cold if temperature == "cold" else _make_hot)(_store_file(server, digest))
        got = _read(server, _name(digest), offset, limit)
        end = offset + limit if limit else size
        assert got == data[offset:end], (offset, limit)


@pytest.mark.parametrize("size", [4097, 9 * MIB], ids=lambda s: f"{s}B")
def test_compressed_cold_read(stored: tuple[CasfsServer, dict], size: int) -> None:
    server, blobs = stored
    digest, data = blobs[size]
    _make_cold(_store_file(server, digest))
    for offset in (0, 4095, min(size, MIB + 1)):
        frame = _read(server, _name(digest, compressed=True), offset)
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
        assert plain == data[offset:]


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_a_direct_cold_read_does_not_fill_the_page_cache(
    stored: tuple[CasfsServer, dict], request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["stored"] != "direct":
        pytest.skip("only the direct path reads around the page cache")
    server, blobs = stored
    digest, data = blobs[9 * MIB]
    path = _store_file(server, digest)
    _wait_until_cold(path)
    assert _read(server, _name(digest)) == data
    # only the probe of the first and last page (and none of the direct reads) went through
    assert _cached_pages(path) <= 2 + 2 * 32  # the kernel may read a little around a probe


def _wait_until_cold(path: Path) -> None:
    """Drop the file's pages. Pages still under I/O (the readahead of an earlier read) are
    not dropped at once: ask again until none is left (skip if they never go)."""
    deadline = time.monotonic() + 10
    _make_cold(path)
    while _cached_pages(path) != 0:
        if time.monotonic() > deadline:
            pytest.skip("this file system keeps the pages (fadvise DONTNEED did not drop them)")
        time.sleep(0.05)
        _make_cold(path)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_a_hot_blob_is_seen_hot_and_a_cold_one_cold(stored: tuple[CasfsServer, dict]) -> None:
    server, blobs = stored
    digest, _ = blobs[9 * MIB]
    path = _store_file(server, digest)
    with open(path, "rb") as file:
        _wait_until_cold(path)
        assert not blobread.is_cached(file.fileno(), 0, digest.size)
        _make_hot(path)
        assert blobread.is_cached(file.fileno(), 0, digest.size)


def test_a_blob_removed_mid_read_is_still_read_whole(tmp_path: Path) -> None:
    data = os.urandom(12 * MIB + 5)
    source = tmp_path / "blob"
    source.write_bytes(data)
    with CasfsServer(tmp_path / "store") as server:
        digest = run_client(server.endpoint, lambda c: c.upload_file(source))
        path = _store_file(server, digest)
        _make_cold(path)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = bytestream_pb2_grpc.ByteStreamStub(channel)
            responses = stub.Read(
                bytestream_pb2.ReadRequest(resource_name=_name(digest)), timeout=60
            )
            first = next(responses).data
            path.unlink()  # as an eviction does, while the server holds the file open
            rest = b"".join(response.data for response in responses)
        assert first + rest == data
