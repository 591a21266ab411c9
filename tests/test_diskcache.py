"""The disk cache under the block cache, with real mounts over a real ``casfs serve``:
a remount reads what an earlier mount read without one ByteStream or batch read; a torn
or altered block file is never served (it is refetched); the size bound holds; files are
private; two mounts share one cache directory."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casfs.digest import Digest
from casfs.fs.status import StatusError, read_status
from casfs.mounthelper import translate
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_client_server import MIB, run_client
from tests.test_observability import Scrape, metrics_url

READS = ("Read", "BatchReadBlobs")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CasfsServer]:
    with CasfsServer(tmp_path / "store", "--metrics", "127.0.0.1:0") as server:
        yield server


def upload(server: CasfsServer, data: bytes) -> Digest:
    path = server.store.parent / f"upload-{hashlib.sha256(data).hexdigest()}"
    path.write_bytes(data)
    return run_client(server.endpoint, lambda client: client.upload_file(path))


def reads(server: CasfsServer) -> float:
    """ByteStream Reads and BatchReadBlobs the server has answered."""
    scrape = Scrape.of(metrics_url(server.log.read_text()))
    return sum(scrape.value("casfs_grpc_server_handled_total", grpc_method=m) for m in READS)


def poll(what: Callable[[], Any], why: str, timeout: float = 20.0) -> Any:
    """``what()`` once it is truthy (StatusError counts as not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = what()
        except StatusError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def disk_status(mount: CasfsMount) -> dict[str, int]:
    document: dict[str, int] = read_status(mount.mountpoint)["disk_cache"]
    return document


def blob_path(mount: CasfsMount, digest: Digest) -> Path:
    return mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)


def read_and_keep(mount: CasfsMount, digest: Digest, data: bytes, blocks: int) -> None:
    """Read the blob through the mount and wait until ``blocks`` more blocks are on disk."""
    before = disk_status(mount)["written_blocks"]
    assert blob_path(mount, digest).read_bytes() == data
    poll(
        lambda: disk_status(mount)["written_blocks"] >= before + blocks,
        f"the blocks never reached the disk: {disk_status(mount)}",
    )


def block_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.parent.name != "tmp" and path.name != "remote.txt"
    )


def mount(tmp_path: Path, server: CasfsServer, name: str, disk: Path, *extra: str) -> CasfsMount:
    (tmp_path / name).mkdir(exist_ok=True)
    args = ("--remote", server.endpoint, "--disk-cache", str(disk), *extra)
    return CasfsMount(tmp_path / name, *args)


def test_a_remount_reads_from_disk_without_a_remote_read(
    tmp_path: Path, server: CasfsServer
) -> None:
    data = os.urandom(5 * MIB + 3)
    small = b"a small blob, fetched whole at its lookup " * 50
    digest, small_digest = upload(server, data), upload(server, small)
    disk = tmp_path / "disk"
    with mount(tmp_path, server, "mnt", disk) as first:
        read_and_keep(first, digest, data, 6)
        read_and_keep(first, small_digest, small, 1)
    # Private: the directories 0700, the files 0600.
    for path in [disk, *disk.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    assert len(block_files(disk)) == 7

    before = reads(server)
    with mount(tmp_path, server, "mnt", disk, "--metrics", "127.0.0.1:0") as second:
        assert blob_path(second, digest).read_bytes() == data
        assert blob_path(second, small_digest).read_bytes() == small
        with open(blob_path(second, digest), "rb") as blob:  # a random read, too
            blob.seek(3 * MIB + 17)
            assert blob.read(4096) == data[3 * MIB + 17 : 3 * MIB + 17 + 4096]
        status = read_status(second.mountpoint)
        assert status["cas"]["fetched_bytes"] == 0
        assert status["disk_cache"]["hits"] >= 7
        scrape = Scrape.of(metrics_url(second.log_text()))
    assert reads(server) == before
    assert scrape.value("casfs_disk_cache_hits_total") >= 7
    assert scrape.value("casfs_disk_cache_bytes") >= len(data)


def test_a_torn_or_altered_block_is_refetched(tmp_path: Path, server: CasfsServer) -> None:
    data = os.urandom(4 * MIB)
    digest = upload(server, data)
    disk = tmp_path / "disk"
    with mount(tmp_path, server, "mnt", disk) as first:
        read_and_keep(first, digest, data, 4)
    files = block_files(disk)
    by_index = {int(path.name.rsplit(".", 1)[1]): path for path in files}
    with open(by_index[1], "r+b") as torn:  # a crash before the data reached the disk
        torn.truncate(MIB // 2)
    with open(by_index[2], "r+b") as altered:  # one flipped byte, same length
        altered.seek(1000)
        byte = altered.read(1)
        altered.seek(1000)
        altered.write(bytes([byte[0] ^ 0xFF]))

    before = reads(server)
    with mount(tmp_path, server, "mnt", disk) as second:
        assert hashlib.sha256(blob_path(second, digest).read_bytes()).digest() == bytes.fromhex(
            digest.hash
        )
        poll(lambda: disk_status(second)["written_blocks"] >= 2, "refetched blocks not kept")
        status = disk_status(second)
        assert status["corrupt"] == 2
    assert reads(server) > before  # the two blocks came from the server again
    assert by_index[1].stat().st_size == MIB + 16  # and are whole on disk again


def test_a_block_missing_past_the_first_loads_is_fetched_alone(
    tmp_path: Path, server: CasfsServer
) -> None:
    """Blocks are loaded from disk several calls ahead of the reader: a block missing
    from the third call on is fetched from the remote, and the blocks after it come from
    disk again."""
    data = os.urandom(14 * MIB)
    digest = upload(server, data)
    disk = tmp_path / "disk"
    with mount(tmp_path, server, "mnt", disk) as first:
        read_and_keep(first, digest, data, 14)
    by_index = {int(path.name.rsplit(".", 1)[1]): path for path in block_files(disk)}
    by_index[9].unlink()

    with mount(tmp_path, server, "mnt", disk) as second:
        assert blob_path(second, digest).read_bytes() == data
        status = read_status(second.mountpoint)
        assert 0 < status["cas"]["fetched_bytes"] <= MIB  # block 9 alone
        assert status["disk_cache"]["hits"] >= 13


def test_the_size_bound_holds(tmp_path: Path, server: CasfsServer) -> None:
    limit = 6 * MIB
    blobs = [os.urandom(3 * MIB) for _ in range(4)]
    digests = [upload(server, data) for data in blobs]
    disk = tmp_path / "disk"
    with mount(tmp_path, server, "mnt", disk, "--disk-cache-size", "6M") as mounted:
        for digest, data in zip(digests, blobs, strict=True):
            read_and_keep(mounted, digest, data, 3)
            on_disk = sum(path.stat().st_size for path in block_files(disk))
            assert on_disk <= limit + 3 * (MIB + 16)  # evicted behind the write that passed it
        poll(lambda: disk_status(mounted)["evictions"] > 0, "nothing was evicted")
        assert disk_status(mounted)["used_bytes"] <= limit
    assert sum(path.stat().st_size for path in block_files(disk)) <= limit
    # The least recently used went first: the last blob read is whole on disk.
    last = {path.name for path in block_files(disk)}
    assert {f"{digests[-1].hash}-{digests[-1].size}.{MIB}.{i}" for i in range(3)} <= last


def test_two_mounts_share_one_disk_cache(tmp_path: Path, server: CasfsServer) -> None:
    one, both = os.urandom(3 * MIB + 1), os.urandom(8 * MIB + 7)
    digest_one, digest_both = upload(server, one), upload(server, both)
    disk = tmp_path / "disk"
    with (
        mount(tmp_path, server, "a", disk) as first,
        mount(tmp_path, server, "b", disk) as second,
    ):
        read_and_keep(first, digest_one, one, 4)
        before = reads(server)
        assert blob_path(second, digest_one).read_bytes() == one  # from the first's blocks
        assert reads(server) == before
        results: dict[str, bytes] = {}

        def read(mounted: CasfsMount) -> None:
            results[mounted.mountpoint.name] = blob_path(mounted, digest_both).read_bytes()

        threads = [threading.Thread(target=read, args=(m,)) for m in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == {"a": both, "b": both}
        # Each block written by one mount or both (the second rename replaces the first).
        poll(
            lambda: len([p for p in block_files(disk) if digest_both.hash in p.name]) == 9,
            "the blocks of the blob read by both never all reached the disk",
        )
    assert not list((disk / "tmp").iterdir())


def test_no_disk_cache(tmp_path: Path, server: CasfsServer) -> None:
    data = os.urandom(MIB + 1)
    digest = upload(server, data)
    disk = tmp_path / "disk"
    (tmp_path / "mnt").mkdir()
    args = ("--remote", server.endpoint, "--disk-cache", str(disk), "--no-disk-cache")
    with CasfsMount(tmp_path / "mnt", *args) as mounted:
        assert blob_path(mounted, digest).read_bytes() == data
        assert read_status(mounted.mountpoint)["disk_cache"] is None
    assert not disk.exists()


def test_mount_helper_options() -> None:
    command, _ = translate(
        ["grpc://cas:1", "/mnt", "-o", "disk_cache=/d,disk_cache_size=2G,no_disk_cache"]
    )
    assert command[command.index("--disk-cache") + 1] == "/d"
    assert command[command.index("--disk-cache-size") + 1] == "2G"
    assert "--no-disk-cache" in command


def test_the_embedded_store_gets_no_disk_cache_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded store is on local disk already: a mount of it with no --disk-cache
    keeps no second copy of its blocks under the user's cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = os.urandom(MIB + 1)
    (tmp_path / "mnt").mkdir()
    args = ("--store", str(tmp_path / "store"))
    with CasfsMount(tmp_path / "mnt", *args, default_disk_cache=True) as mounted:
        uploaded = mounted.mountpoint / "main" / "uploads" / "f"
        uploaded.write_bytes(data)
        digest = os.getxattr(uploaded, "user.casfs.digest").decode()
        assert (mounted.mountpoint / "main" / "blobs" / digest).read_bytes() == data
        assert read_status(mounted.mountpoint)["disk_cache"] is None
    assert not (tmp_path / "xdg" / "casfs" / "blocks").exists()
