"""Servers that bend the REAPI rules, each faked by ``tests/faultproxy.py`` in front of a
real ``casfs serve``, with the mount written and read through by real tools: the bytes must
come out right, never EIO while they can be had.

The mount tests share one battery (``Battery``): four 5 MiB files and a 200-file tree
copied in with ``cp``, then, through a fresh mount (so that every read reaches the server,
not the page cache), ``sha256sum``, ``tail -c 12345``, ``dd`` with odd ``bs``/``skip``/
``count``, ``head -c 1`` and a ``sha256sum`` of the whole tree. The client tests pin what
the battery cannot see: odd ranges one by one, resumes, how many calls a refusal costs.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from casfs.cas.client import PROBE_BLOB, CasClient
from casfs.cas.errors import Unimplemented
from casfs.digest import Digest
from tests.faultproxy import FaultProxy
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_client_server import MIB, run_client, sha256_file, write_file
from tests.test_mount_read import sh

TREE_FILES = 500  # tests/bent_cost.py's battery
SUITE_TREE_FILES = 200  # the suite's: 180 small (batches), 20 up to 1.5 MiB (ranged reads)
TOOLS = ("sha256sum", "tail", "dd", "head")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[FaultProxy]:
    """A real server with the fault proxy in front of it."""
    with (
        CasfsServer(tmp_path / "store") as server,
        FaultProxy(f"127.0.0.1:{server.port}") as running,
    ):
        yield running


@dataclass
class Battery:
    """What the tests write and read back: one 5 MiB file per tool, and a tree."""

    root: Path
    sources: dict[str, Path]
    files: dict[str, bytes]  # the tree's, by relative name

    @classmethod
    def make(cls, root: Path, tree_files: int = TREE_FILES) -> Battery:
        sources = {
            tool: write_file(root / tool, 5 * MIB + 12345 + n) for n, tool in enumerate(TOOLS)
        }
        # Most files small (BatchUpdateBlobs, BatchReadBlobs), every tenth up to 1.5 MiB
        # (ranged ByteStream Reads).
        rng = random.Random(15)
        files: dict[str, bytes] = {}
        for i in range(tree_files):
            size = rng.randrange(64 << 10, 3 * MIB // 2) if i % 10 == 0 else rng.randrange(20_000)
            files[f"d{i % 3}/f{i}"] = rng.randbytes(size)
        for name, data in files.items():
            (root / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "tree" / name).write_bytes(data)
        return cls(root, sources, files)

    def digest(self, tool: str) -> Digest:
        return Digest(sha256_file(self.sources[tool]), self.sources[tool].stat().st_size)

    def write_in(self, mount: CasfsMount) -> None:
        """``cp`` every file into ``uploads/``; each must succeed."""
        uploads = mount.mountpoint / "main" / "uploads"
        for tool, source in self.sources.items():
            sh("cp", str(source), str(uploads / tool))
        sh("cp", "-r", str(self.root / "tree"), str(uploads))

    def read_back(self, mount: CasfsMount, after_first: Callable[[], None] = lambda: None) -> None:
        """Read everything through ``blobs/<hash>/<size>`` with the tools; ``after_first``
        runs once the first tool is done."""
        blobs = mount.mountpoint / "main" / "blobs"

        def blob(tool: str) -> str:
            digest = self.digest(tool)
            return str(blobs / digest.hash / str(digest.size))

        out = sh("sha256sum", blob("sha256sum")).stdout.decode()
        assert out.split()[0] == self.digest("sha256sum").hash
        after_first()
        data = self.sources["tail"].read_bytes()
        assert sh("tail", "-c", "12345", blob("tail")).stdout == data[-12345:]
        data = self.sources["dd"].read_bytes()
        got = sh("dd", f"if={blob('dd')}", "bs=4099", "skip=333", "count=77", "status=none")
        assert got.stdout == data[333 * 4099 : 410 * 4099]
        assert sh("head", "-c", "1", blob("head")).stdout == self.sources["head"].read_bytes()[:1]
        want = {hashlib.sha256(data).hexdigest(): len(data) for data in self.files.values()}
        paths = [str(blobs / hash_ / str(size)) for hash_, size in want.items()]
        out = sh("sha256sum", *paths).stdout.decode()
        assert {line.split()[0] for line in out.splitlines()} == set(want)

    def round_trip(
        self, endpoint: str, after_first: Callable[[], None] = lambda: None
    ) -> tuple[str, str]:
        """Write in through one mount, read back through a fresh one; their logs."""
        with CasfsMount(self.root / "mnt-in", "--remote", endpoint) as writer:
            self.write_in(writer)
        with CasfsMount(self.root / "mnt-out", "--remote", endpoint) as reader:
            self.read_back(reader, after_first)
        return writer.log_text(), reader.log_text()


# -- 1. ranged reads only in whole blocks ----------------------------------------------------


@pytest.mark.parametrize("answer", ["refuse", "overshoot"])
def test_a_server_that_reads_whole_blocks_only(
    proxy: FaultProxy, tmp_path: Path, answer: str
) -> None:
    """Refused (DATA_LOSS "Blob incomplete") or answered past read_limit, a read that is not
    in whole 1 MiB blocks is asked again aligned and trimmed; the mount learns it at its
    first read and asks aligned from then on."""
    proxy.block_reads = answer
    learned: list[int] = []
    _, log = Battery.make(tmp_path, SUITE_TREE_FILES).round_trip(
        proxy.endpoint, lambda: learned.append(proxy.injected["block_reads"])
    )
    assert learned[0] >= 1, "the fault never happened"
    assert proxy.injected["block_reads"] == learned[0]  # every read since was aligned
    assert "whole 1024 KiB blocks" in log


def test_a_habit_is_learned_once_for_every_instance(proxy: FaultProxy, tmp_path: Path) -> None:
    """The clients of a mount's instances share what they learn of the remote: a read
    through the second instance goes straight to whole blocks."""
    proxy.block_reads = "refuse"
    source = write_file(tmp_path / "blob", 3 * MIB + 5)
    digest = run_client(proxy.endpoint, lambda c: c.upload_file(source))
    args = ("--remote", proxy.endpoint, "--instance", "main", "--instance", "")
    learned: list[int] = []
    with CasfsMount(tmp_path / "mnt", *args) as mount:
        for blobs in (mount.mountpoint / "main" / "blobs", mount.mountpoint / "blobs"):
            blob = blobs / digest.hash / str(digest.size)
            assert sh("tail", "-c", "12345", str(blob)).stdout == source.read_bytes()[-12345:]
            learned.append(proxy.injected["block_reads"])
    assert learned[0] >= 1, "the fault never happened"
    assert learned[1] == learned[0]


@pytest.mark.parametrize("answer", ["refuse", "overshoot"])
def test_the_client_trims_whole_blocks_and_resumes_aligned(
    proxy: FaultProxy, tmp_path: Path, answer: str
) -> None:
    """Odd ranges by ``read_range`` and ``stream_range``, and a stream cut at an odd offset
    and resumed, against a server that sends whole blocks: exactly the bytes asked for."""
    source = write_file(tmp_path / "blob", 5 * MIB + 777)
    data = source.read_bytes()
    digest = run_client(proxy.endpoint, lambda c: c.upload_file(source))
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


# -- 2. no half-close ------------------------------------------------------------------------


def test_a_server_that_refuses_a_half_close(proxy: FaultProxy, tmp_path: Path) -> None:
    """Write streams cut before finish_write are answered UNIMPLEMENTED "Cannot close
    stream before finishing write", and QueryWriteStatus is UNIMPLEMENTED: each upload
    starts again from offset 0 and ``cp`` succeeds (it failed with EOPNOTSUPP)."""
    proxy.refuse_half_close = proxy.query_write_status_unimplemented = True
    proxy.cut_writes = (2 * MIB, 1)  # the first large file (the tree goes by batch)
    writer_log, _ = Battery.make(tmp_path, SUITE_TREE_FILES).round_trip(proxy.endpoint)
    assert proxy.injected["refuse_half_close"] == 1
    assert writer_log.count("restarting from offset 0") == 1


def test_a_write_refused_twice_in_a_row_is_final(proxy: FaultProxy, tmp_path: Path) -> None:
    """The restart is once per attempt: a server that answers every Write UNIMPLEMENTED
    gets two Writes, not a retry loop, and the error is ENOTSUP."""
    proxy.refuse_half_close = proxy.query_write_status_unimplemented = True
    proxy.cut_writes = (MIB, 100)
    source = write_file(tmp_path / "big", 6 * MIB)
    with pytest.raises(Unimplemented):
        run_client(proxy.endpoint, lambda c: c.upload_file(source))
    assert proxy.calls["/google.bytestream.ByteStream/Write"] == 2


# -- 3. FindMissingBlobs by hash alone -------------------------------------------------------


def test_a_server_that_answers_find_missing_by_hash(proxy: FaultProxy, tmp_path: Path) -> None:
    """A server that says any size of a stored hash is present: a wrong size looked up
    before anything is read is ENOENT (it showed a file of that size, whose reads gave
    EIO), for a large blob (FindMissingBlobs) and a small one (fetched whole at lookup);
    the right sizes read back right."""
    proxy.by_hash_store = tmp_path / "store"
    battery = Battery.make(tmp_path, SUITE_TREE_FILES)
    with CasfsMount(tmp_path / "mnt-in", "--remote", proxy.endpoint) as writer:
        battery.write_in(writer)
    small_data = next(data for data in battery.files.values() if 1000 < len(data) < 20_000)
    small = Digest(hashlib.sha256(small_data).hexdigest(), len(small_data))
    with CasfsMount(tmp_path / "mnt-out", "--remote", proxy.endpoint) as reader:
        blobs = reader.mountpoint / "main" / "blobs"
        for digest in (battery.digest("tail"), small):
            for wrong in (digest.size - 1, digest.size + 1):
                got = sh("stat", str(blobs / digest.hash / str(wrong)), check=False)
                assert b"No such file or directory" in got.stderr, got
        assert proxy.injected["by_hash"] >= 4, "the fault never happened"
        battery.read_back(reader)
    assert "by hash alone" in reader.log_text()
    assert "confirmed by reading" in reader.log_text()


def test_a_read_only_mount_stores_no_probe(proxy: FaultProxy, tmp_path: Path) -> None:
    """A read-only mount writes nothing to the server, not even the probe blob, so over a
    server that answers by hash it cannot confirm sizes: it says so, and still reads right."""
    proxy.by_hash_store = tmp_path / "store"
    source = write_file(tmp_path / "blob", 3 * MIB + 1)
    digest = run_client(proxy.endpoint, lambda c: c.upload_file(source))
    with CasfsMount(tmp_path / "mnt", "--remote", proxy.endpoint, "--read-only") as mount:
        blob = mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)
        assert sh("sha256sum", str(blob)).stdout.decode().split()[0] == digest.hash
    assert "a read-only mount stores no probe blob" in mount.log_text()
    probe = Digest.of_bytes(PROBE_BLOB)
    assert not (tmp_path / "store" / "cas" / "sha256" / probe.hash[:2] / probe.hash).exists()
