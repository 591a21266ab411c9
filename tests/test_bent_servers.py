"""Servers that bend the REAPI rules, each faked by ``tests/faultproxy.py`` in front of a
real ``casfs serve``, with the mount read and written through by real tools: the bytes must
come out right, never EIO while they can be had."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.faultproxy import FaultProxy
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_client_server import MIB, run_client, write_file
from tests.test_mount_read import sh

TREE_FILES = 500


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[FaultProxy]:
    """A real server with the fault proxy in front of it."""
    with (
        CasfsServer(tmp_path / "store") as server,
        FaultProxy(f"127.0.0.1:{server.port}") as running,
    ):
        yield running


def upload(endpoint: str, source: Path) -> Digest:
    return run_client(endpoint, lambda c: c.upload_file(source))


def tree(root: Path) -> dict[str, bytes]:
    """A 500-file tree in three directories: most files small (read by BatchReadBlobs),
    every tenth up to 1.5 MiB (read by ranged ByteStream Reads). Returns name -> content."""
    rng = random.Random(15)
    files: dict[str, bytes] = {}
    for i in range(TREE_FILES):
        size = rng.randrange(64 << 10, 3 * MIB // 2) if i % 10 == 0 else rng.randrange(20_000)
        name = f"d{i % 3}/f{i}"
        files[name] = rng.randbytes(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(files[name])
    return files


def read_tree_back(mount: CasfsMount, files: dict[str, bytes]) -> None:
    """Every file of the tree read through ``blobs/<hash>/<size>`` by one ``sha256sum``."""
    blobs = mount.mountpoint / "main" / "blobs"
    want = {hashlib.sha256(data).hexdigest(): len(data) for data in files.values()}
    paths = [str(blobs / hash_ / str(size)) for hash_, size in want.items()]
    out = sh("sha256sum", *paths).stdout.decode().splitlines()
    got = {line.split()[0] for line in out}
    assert got == set(want)


# -- 1. ranged reads only in whole blocks ----------------------------------------------------


@pytest.mark.parametrize("answer", ["refuse", "overshoot"])
def test_a_server_that_reads_whole_blocks_only(
    proxy: FaultProxy, tmp_path: Path, answer: str
) -> None:
    """Refused (DATA_LOSS "Blob incomplete") or answered past read_limit, a read that is not
    in whole 1 MiB blocks is asked again aligned and trimmed; the mount learns it once and
    asks aligned from then on."""
    proxy.block_reads = answer
    sources = {
        tool: write_file(tmp_path / tool, 5 * MIB + 12345 + n)
        for n, tool in enumerate(["sha256sum", "tail", "dd", "head"])
    }
    digests = {tool: upload(proxy.endpoint, source) for tool, source in sources.items()}
    files = tree(tmp_path / "tree")
    with CasfsMount(tmp_path / "mnt", "--remote", proxy.endpoint) as mount:
        blobs = mount.mountpoint / "main" / "blobs"

        def blob(tool: str) -> str:
            return str(blobs / digests[tool].hash / str(digests[tool].size))

        out = sh("sha256sum", blob("sha256sum")).stdout.decode()
        assert out.split()[0] == digests["sha256sum"].hash
        learned = proxy.injected["block_reads"]
        assert learned >= 1, "the fault never happened"

        data = sources["tail"].read_bytes()
        assert sh("tail", "-c", "12345", blob("tail")).stdout == data[-12345:]
        data = sources["dd"].read_bytes()
        got = sh("dd", f"if={blob('dd')}", "bs=4099", "skip=333", "count=77", "status=none")
        assert got.stdout == data[333 * 4099 : 410 * 4099]
        assert sh("head", "-c", "1", blob("head")).stdout == sources["head"].read_bytes()[:1]

        sh("cp", "-r", str(tmp_path / "tree"), str(mount.mountpoint / "main" / "uploads"))
        sh("diff", "-r", str(tmp_path / "tree"), str(mount.mountpoint / "main/uploads/tree"))
        assert proxy.injected["block_reads"] == learned  # every read since was aligned
        assert "whole 1024 KiB blocks" in mount.log_text()
    with CasfsMount(tmp_path / "mnt2", "--remote", proxy.endpoint) as fresh:
        head = fresh.mountpoint / "main" / "blobs" / digests["head"].hash
        assert (
            sh("head", "-c", "1", str(head / str(digests["head"].size))).stdout
            == (sources["head"].read_bytes()[:1])
        )
        learned = proxy.injected["block_reads"]
        read_tree_back(fresh, files)
        assert proxy.injected["block_reads"] == learned


@pytest.mark.parametrize("answer", ["refuse", "overshoot"])
def test_the_client_trims_whole_blocks_and_resumes_aligned(
    proxy: FaultProxy, tmp_path: Path, answer: str
) -> None:
    """Odd ranges by ``read_range`` and ``stream_range``, and a stream cut at an odd offset
    and resumed, against a server that sends whole blocks: exactly the bytes asked for."""
    source = write_file(tmp_path / "blob", 5 * MIB + 777)
    data = source.read_bytes()
    digest = upload(proxy.endpoint, source)
    proxy.block_reads = answer
    ranges = [(1, 1), (12345, 100_000), (MIB - 1, 2), (3 * MIB + 5, MIB + 3), (0, 5 * MIB)]

    async def reads(client: CasClient) -> tuple[list[bytes], list[bytes], bytes]:
        ranged = [await client.read_range(digest, o, n) for o, n in ranges]
        streamed = []
        for o, n in ranges:
            streamed.append(b"".join([bytes(c) async for c in client.stream_range(digest, o, n)]))
        proxy.cut_reads = (MIB + MIB // 2, 1)  # the resume starts mid-block
        resumed = b"".join([bytes(c) async for c in client.stream_range(digest, 7, 4 * MIB)])
        return ranged, streamed, resumed

    ranged, streamed, resumed = run_client(proxy.endpoint, reads)
    want = [data[o : o + n] for o, n in ranges]
    assert ranged == want
    assert streamed == want
    assert resumed == data[7 : 4 * MIB + 7]
    assert proxy.injected["cut_reads"] == 1
    assert proxy.injected["block_reads"] == 1  # learned at the first read
