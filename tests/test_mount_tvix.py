"""A real mount of a tvix castore remote: ``casfs serve``'s tvix endpoint, and a bent tvix
server in this process for what ``casfs serve`` never does (several chunks or none,
wrong bytes, a Put cut off or answered with another digest)."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import blake3
import pytest
import trio

from casfs.cas.client import CasClient
from casfs.cas.tvix import TvixClient
from casfs.digest import Digest, DigestFunction
from tests.conftest import remote
from tests.mounts import CasfsMount, peak_rss_bytes
from tests.servers import CasfsServer
from tests.test_client_server import sha256_file, write_file
from tests.tvixbent import BentTvix, serve

T = TypeVar("T")
MIB = 1 << 20
BLAKE3 = DigestFunction.BLAKE3


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=300, check=check)


def sha256sum(path: Path) -> str:
    """What the real tool says the file's sha256 is (a reader of the whole file)."""
    return sh("sha256sum", str(path)).stdout.decode().split()[0]


def blake3_of(path: Path) -> Digest:
    hasher = blake3.blake3()
    with open(path, "rb") as file:
        while chunk := file.read(8 * MIB):
            hasher.update(chunk)
    return Digest(hasher.hexdigest(), path.stat().st_size, BLAKE3)


def tvix_url(server: CasfsServer) -> str:
    return f"grpc+http://127.0.0.1:{server.port}"


@dataclass
class Fixture:
    root: Path
    server: CasfsServer
    tvix: CasfsMount  # casfs serve's tvix endpoint
    reapi: CasfsMount  # the same server as REAPI

    def blob(self, mount: CasfsMount, digest: Digest) -> Path:
        return mount.mountpoint / "main" / "blobs" / "blake3" / digest.hash / str(digest.size)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("tvix")
    with CasfsServer(root / "store") as server:
        small_cache = ("--cache-size", "32M", "--retries", "2")
        with (
            CasfsMount(root / "tvix", "--remote", tvix_url(server), *small_cache) as tvix,
            CasfsMount(root / "reapi", "--remote", server.endpoint, "--retries", "2") as reapi,
        ):
            yield Fixture(root, server, tvix, reapi)


def test_cp_in_and_read_back(fx: Fixture) -> None:
    source = write_file(fx.root / "cp-src", 3 * MIB + 17)
    target = fx.tvix.mountpoint / "main" / "uploads" / "cp.bin"
    sh("cp", str(source), str(target))
    digest = blake3_of(source)
    assert os.getxattr(target, "user.casfs.digest").decode() == f"{digest.hash}/{digest.size}"
    assert os.getxattr(target, "user.casfs.digest_function") == b"blake3"
    assert sh("cmp", str(source), str(fx.blob(fx.tvix, digest))).returncode == 0
    assert sh("cmp", str(source), str(target)).returncode == 0


def test_tail_and_dd_at_odd_offsets(fx: Fixture) -> None:
    source = write_file(fx.root / "dd-src", 5 * MIB + 3)
    digest = run_tvix(fx.server, lambda tvix: tvix.put(source))
    blob = fx.blob(fx.tvix, digest)
    data = source.read_bytes()
    assert sh("tail", "-c", "100", str(blob)).stdout == data[-100:]
    for skip, count in [(1_234_567, 777), (3, 5), (4 * MIB - 1, 4099), (5 * MIB - 7, 100)]:
        out = sh("dd", f"if={blob}", "bs=1", f"skip={skip}", f"count={count}", "status=none")
        assert out.stdout == data[skip : skip + count], (skip, count)
    assert sh("cmp", str(source), str(blob)).returncode == 0


def test_four_concurrent_readers(fx: Fixture) -> None:
    source = write_file(fx.root / "four-src", 12 * MIB)
    digest = run_tvix(fx.server, lambda tvix: tvix.put(source))
    blob = fx.blob(fx.tvix, digest)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert concurrent_sums(blob, 4) == [expected] * 4


# 64 MiB in the suite; CASFS_TVIX_LARGE_MIB=1024 for the 1 GiB of issue 19.
LARGE = int(os.environ.get("CASFS_TVIX_LARGE_MIB", "64")) * MIB


def test_a_large_blob_streams_with_bounded_memory(fx: Fixture) -> None:
    source = write_file(fx.root / "large-src", LARGE)
    digest = run_tvix(fx.server, lambda tvix: tvix.put(source))
    expected = sha256_file(source)
    source.unlink()
    assert sha256sum(fx.blob(fx.tvix, digest)) == expected
    peak = peak_rss_bytes(fx.tvix.pid)
    print(f"{LARGE // MIB} MiB through a 32 MiB cache: peak RSS {peak / MIB:.0f} MiB")
    assert peak < 32 * MIB + 150 * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_tvix_put_reads_through_reapi_and_bytestream(fx: Fixture) -> None:
    source = write_file(fx.root / "cross-src", 2 * MIB + 5)
    target = fx.tvix.mountpoint / "main" / "uploads" / "cross.bin"
    sh("cp", str(source), str(target))
    digest = blake3_of(source)
    assert sh("cmp", str(source), str(fx.blob(fx.reapi, digest))).returncode == 0

    async def bytestream(client: CasClient) -> bytes:
        return b"".join([bytes(c) async for c in client.stream_range(digest, 0, digest.size)])

    assert run_reapi(fx.server, bytestream) == source.read_bytes()


def test_reapi_write_reads_through_tvix(fx: Fixture) -> None:
    source = write_file(fx.root / "reapi-src", 3 * MIB + 1)
    digest = run_reapi(fx.server, lambda client: client.upload_file(source, BLAKE3))
    assert sh("cmp", str(source), str(fx.blob(fx.tvix, digest))).returncode == 0
    # A direct write of blobs/blake3/<hash>/<size> through the REAPI mount, read by tvix.
    other = write_file(fx.root / "direct-src", MIB + 2)
    written = blake3_of(other)
    sh("cp", str(other), str(fx.blob(fx.reapi, written)))
    assert sh("cmp", str(other), str(fx.blob(fx.tvix, written))).returncode == 0


def test_malformed_names_are_enoent(fx: Fixture) -> None:
    source = write_file(fx.root / "names-src", 1000)
    digest = run_tvix(fx.server, lambda tvix: tvix.put(source))
    functions = fx.tvix.mountpoint / "main" / "blobs" / "blake3"
    for name in [
        f"{digest.hash[:-2]}/{digest.size}",  # 31 bytes
        f"{digest.hash}00/{digest.size}",  # 33 bytes
        f"{'g' * 64}/{digest.size}",
        f"{digest.hash}/{digest.size + 1}",  # another size
        f"{digest.hash}/0{digest.size}",
        f"{'0' * 64}/5",  # nobody has it
    ]:
        with pytest.raises(FileNotFoundError):
            os.stat(functions / name)
    with pytest.raises(FileNotFoundError):  # tvix has blake3 only
        os.stat(fx.tvix.mountpoint / "main" / "blobs" / ("ab" * 32) / "5")
    assert (functions / digest.hash / str(digest.size)).read_bytes() == source.read_bytes()


def test_a_direct_write_of_a_blob_name(fx: Fixture) -> None:
    source = write_file(fx.root / "direct-tvix", MIB + 3)
    digest = blake3_of(source)
    sh("cp", str(source), str(fx.blob(fx.tvix, digest)))  # tvix Put, checked against its name
    assert sh("cmp", str(source), str(fx.blob(fx.reapi, digest))).returncode == 0
    other = fx.blob(fx.tvix, Digest("ab" * 32, digest.size, BLAKE3))  # not its content
    refused = sh("cp", str(source), str(other), check=False)
    assert refused.returncode != 0 and b"Input/output error" in refused.stderr


def test_a_dead_or_foreign_endpoint_fails_the_mount(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    endpoint = f"grpc+http://127.0.0.1:{port}"  # nothing listens there
    refused = subprocess.run(
        [sys.executable, "-m", "casfs", "mount", str(mountpoint), "--remote", endpoint,
         "--cache-dir", str(tmp_path / "cache"), "--no-disk-cache"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"cannot use {endpoint} as a tvix castore" in refused.stderr, refused.stderr
    assert "no_check_remote" in refused.stderr


# -- a bent tvix server ---------------------------------------------------------------------


@dataclass
class Bent:
    root: Path
    servicer: BentTvix
    mount: CasfsMount

    def blob(self, raw: bytes, size: int) -> Path:
        return self.mount.mountpoint / "main" / "blobs" / "blake3" / raw.hex() / str(size)


@pytest.fixture(scope="module")
def bent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bent]:
    root = tmp_path_factory.mktemp("bent")
    servicer = BentTvix()
    server, port = serve(servicer)
    try:
        args = ("--remote", f"tvix+grpc://127.0.0.1:{port}", "--retries", "1", "--no-disk-cache")
        with CasfsMount(root / "mnt", *args, "--cache-size", "64M") as mount:
            yield Bent(root, servicer, mount)
    finally:
        server.stop(None)


def test_a_server_without_directory_service_shows_no_trees(bent: Bent) -> None:
    assert sorted(os.listdir(bent.mount.mountpoint / "main")) == ["blobs", "uploads"]
    assert "has no tvix DirectoryService: no trees/" in bent.mount.log_text()


def test_a_chunked_blob_is_read_by_chunk(bent: Bent) -> None:
    data = os.urandom(6 * MIB + 11)
    raw = bent.servicer.add(data, chunk=MIB)
    blob = bent.blob(raw, len(data))
    chunks = [blake3.blake3(data[i : i + MIB]).digest() for i in range(0, len(data), MIB)]
    assert sh("tail", "-c", "100", str(blob)).stdout == data[-100:]  # in the last two chunks
    assert bent.servicer.reads_of(chunks[6]) == 1
    assert bent.servicer.reads_of(raw) == 0  # never the whole blob
    middle = sh("dd", f"if={blob}", "bs=1", f"skip={3 * MIB + 5}", "count=9", "status=none")
    assert middle.stdout == data[3 * MIB + 5 : 3 * MIB + 14]
    assert set(bent.servicer.reads) & set(chunks) == {chunks[3], chunks[5], chunks[6]}
    assert blob.read_bytes() == data


def test_an_unchunked_blob_is_streamed_from_its_start(bent: Bent) -> None:
    data = os.urandom(8 * MIB + 3)
    raw = bent.servicer.add(data)
    blob = bent.blob(raw, len(data))
    assert sh("tail", "-c", "100", str(blob)).stdout == data[-100:]
    assert bent.servicer.reads_of(raw) == 1
    # What streamed past the tail is in the cache: a read before it costs no Read.
    head = sh("dd", f"if={blob}", "bs=4096", "skip=5", "count=3", "status=none")
    assert head.stdout == data[5 * 4096 : 8 * 4096]
    assert bent.servicer.reads_of(raw) == 1
    # A sequential read from the middle is one stream, however the kernel splits it.
    other = os.urandom(12 * MIB)
    second = bent.servicer.add(other)
    out = sh("dd", f"if={bent.blob(second, len(other))}", "bs=1M", "skip=5", "status=none")
    assert out.stdout == other[5 * MIB :]
    assert bent.servicer.reads_of(second) == 1


def test_concurrent_readers_share_a_stream(bent: Bent) -> None:
    data = os.urandom(16 * MIB)
    raw = bent.servicer.add(data)
    blob = bent.blob(raw, len(data))
    assert concurrent_sums(blob, 4) == [hashlib.sha256(data).hexdigest()] * 4
    assert bent.servicer.reads_of(raw) == 1  # one stream, read by all four


@pytest.mark.parametrize(("habit", "chunk"), [("corrupt", 0), ("short", 0), ("corrupt", MIB)])
def test_wrong_bytes_are_eio(bent: Bent, habit: str, chunk: int) -> None:
    data = os.urandom(3 * MIB + 100)
    raw = bent.servicer.add(data, chunk=chunk, **{habit: True})
    blob = bent.blob(raw, len(data))
    result = sh("cat", str(blob), check=False)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert not result.stdout.endswith(data[-10:])  # the wrong end never reaches a reader
    tail = sh("tail", "-c", "50", str(blob), check=False)
    assert tail.returncode != 0 and tail.stdout == b""


def test_a_wrong_size_of_a_chunked_blob_is_enoent(bent: Bent) -> None:
    data = os.urandom(2 * MIB)
    raw = bent.servicer.add(data, chunk=MIB)
    with pytest.raises(FileNotFoundError):
        os.stat(bent.blob(raw, len(data) - 1))


@pytest.mark.parametrize("mode", ["cut", "lie"])
def test_a_failed_put_fails_close(bent: Bent, mode: str) -> None:
    bent.servicer.put_mode = mode
    try:
        target = bent.mount.mountpoint / "main" / "uploads" / f"put-{mode}.bin"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, os.urandom(MIB))
        with pytest.raises(OSError) as caught:
            os.close(fd)
        assert caught.value.errno == errno.EIO
    finally:
        bent.servicer.put_mode = "ok"
    os.close(os.open(target, os.O_WRONLY))  # pending: the next close commits it
    assert os.getxattr(target, "user.casfs.digest_function") == b"blake3"


# -- helpers --------------------------------------------------------------------------------


def concurrent_sums(path: Path, readers: int) -> list[str]:
    """sha256sum of ``path`` by ``readers`` processes at once."""
    sums: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            sums.append(sha256sum(path))
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sums


def run_tvix(server: CasfsServer, fn: Callable[[TvixClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with TvixClient(remote(tvix_url(server))) as tvix:
            return await fn(tvix)

    return trio.run(main)


def run_reapi(server: CasfsServer, fn: Callable[[CasClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with CasClient(remote(server.endpoint)) as client:
            return await fn(client)

    return trio.run(main)
