"""The mount's read side, through a real FUSE mount and real tools (cat, dd, tail, ...)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs.digest import Digest, DigestFunction
from tests.mounts import CasfsMount, is_mounted, peak_rss_bytes
from tests.servers import CasfsServer
from tests.test_client_server import MIB, run_client, write_file

BLOCK = MIB


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=300, check=check)


# The sha256 of the zero blobs the suite uses, so that no test spends seconds of CPU hashing
# gigabytes of zeros (any other size is hashed below; the 768 MiB test reads its blob back
# through sha256sum, which checks this table too).
_ZERO_DIGESTS: dict[int, str] = {
    512 * MIB: "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767",
    768 * MIB: "d8492a624b5ded59e8a2185b0755f195a58642456e8387ba2817e46f1e05b358",
    4 << 30: "8479e43911dc45e89f934fe48d01297e16f51d17aa561d4d1c216b1ae0fcddca",
}


def zero_blob(store: Path, size: int) -> Digest:
    """A blob of ``size`` zero bytes, put straight into the store as a sparse file."""
    if size not in _ZERO_DIGESTS:
        hasher = hashlib.sha256()
        chunk = bytes(8 * MIB)
        left = size
        while left:
            hasher.update(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        _ZERO_DIGESTS[size] = hasher.hexdigest()
    digest = Digest(_ZERO_DIGESTS[size], size)
    path = store / "cas" / "sha256" / digest.hash[:2] / digest.hash
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return digest


class Fixture:
    def __init__(self, root: Path, server: CasfsServer, mount: CasfsMount) -> None:
        self.root = root
        self.server = server
        self.mount = mount
        self.blobs = mount.mountpoint / "main" / "blobs"

    def upload(self, name: str, size: int) -> tuple[Path, Path]:
        """A random file of ``size`` bytes uploaded; returns (local file, path in the mount)."""
        source = write_file(self.root / name, size)
        digest = run_client(self.server.endpoint, lambda c: c.upload_file(source))
        return source, self.blobs / digest.hash / str(digest.size)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("read")
    with (
        CasfsServer(root / "store", "-v") as server,
        CasfsMount(
            root / "mnt", "--remote", server.endpoint, "--cache-size", "64M", "--retries", "2"
        ) as mount,
    ):
        yield Fixture(root, server, mount)


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 200 * MIB], ids=lambda s: f"{s}B"
)
def test_cat_cmp_sha256sum(fx: Fixture, size: int) -> None:
    source, blob = fx.upload(f"blob-{size}", size)
    assert blob.stat().st_size == size
    sh("cmp", str(source), str(blob))
    line = sh("sha256sum", str(blob)).stdout.decode()
    assert line.split()[0] == blob.parent.name  # the hash the client computed from the source
    with open(source, "rb") as local:
        assert hashlib.file_digest(local, "sha256").hexdigest() == blob.parent.name
    if size <= BLOCK + 1:
        assert sh("cat", str(blob)).stdout == source.read_bytes()


def test_dd_tail_head(fx: Fixture) -> None:
    source, blob = fx.upload("ranges", 20 * MIB + 123)
    data = source.read_bytes()
    skipped = sh("dd", f"if={blob}", "bs=4096", "skip=1000", "count=7", "status=none").stdout
    assert skipped == data[4096 * 1000 : 4096 * 1007]
    assert sh("tail", "-c", "100", str(blob)).stdout == data[-100:]
    assert sh("head", "-c", "5000", str(blob)).stdout == data[:5000]
    assert blob.stat().st_blksize == BLOCK


def test_concurrent_readers(fx: Fixture) -> None:
    shared_source, shared = fx.upload("shared", 24 * MIB + 5)
    others = [fx.upload(f"other-{i}", 6 * MIB + i) for i in range(8)]
    jobs = [str(shared)] * 8 + [str(blob) for _, blob in others]
    processes = [subprocess.Popen(["sha256sum", job], stdout=subprocess.PIPE) for job in jobs]
    sums = [p.communicate(timeout=120)[0].decode().split()[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sums[:8] == [shared.parent.name] * 8
    assert sums[8:] == [blob.parent.name for _, blob in others]
    assert shared.read_bytes() == shared_source.read_bytes()


def test_xattrs(fx: Fixture) -> None:
    _, blob = fx.upload("xattr", 1000)
    dump = sh("getfattr", "-d", "-m", "-", str(blob)).stdout.decode()
    digest = f"{blob.parent.name}/1000"
    assert f'user.casfs.digest="{digest}"' in dump
    assert 'user.casfs.digest_function="sha256"' in dump
    assert f'user.casfs.resource_name="main/blobs/{digest}"' in dump
    missing = sh("getfattr", "-n", "user.other", str(blob), check=False)
    assert missing.returncode != 0 and b"No such attribute" in missing.stderr
    refused = sh("setfattr", "-n", "user.x", "-v", "1", str(blob), check=False)
    assert refused.returncode != 0 and b"Operation not supported" in refused.stderr


def test_missing_and_malformed_names_are_enoent(fx: Fixture) -> None:
    _, blob = fx.upload("names", 77)
    hash_ = blob.parent.name
    absent = hashlib.sha256(b"never uploaded").hexdigest()
    for name in [
        f"{absent}/5",  # well formed, not on the server
        f"{hash_}/78",  # the wrong size
        f"{hash_}/077",  # not canonical
        f"{hash_}/-77",
        f"{hash_}/{2**70}",
        f"{hash_.upper()}/77",
        f"{'z' * 64}/77",
        f"{hash_[:-1]}/77",
        "blake3/xyz/1",
        "../../etc/passwd",
    ]:
        result = sh("cat", str(fx.blobs / name), check=False)
        assert result.returncode != 0, name
        assert b"No such file or directory" in result.stderr, (name, result.stderr)
    assert sh("ls", str(fx.mount.mountpoint / "nope"), check=False).returncode != 0


def test_listings(fx: Fixture) -> None:
    _, blob = fx.upload("listed", 10)
    blob.stat()
    assert blob.parent.name in os.listdir(fx.blobs)
    assert "blake3" in os.listdir(fx.blobs)
    assert os.listdir(blob.parent) == ["10"]
    assert os.listdir(fx.mount.mountpoint) == ["main"]
    assert sh("ls", "-la", str(fx.blobs)).returncode == 0


def test_blobs_cannot_change(fx: Fixture) -> None:
    source, blob = fx.upload("ro", 10)
    assert sh("cp", str(source), str(fx.blobs / "x"), check=False).returncode != 0
    assert sh("touch", str(blob), check=False).returncode != 0
    with pytest.raises(OSError) as caught, open(blob, "r+b") as file:
        file.write(b"other data")  # verified on close, like any write to a blob's name
    assert caught.value.errno == errno.EIO
    assert blob.read_bytes() == source.read_bytes()


def test_blake3_path(fx: Fixture) -> None:
    data = os.urandom(3 * MIB)
    digest = run_client(
        fx.server.endpoint, lambda c: c.upload_bytes(data[:MIB], DigestFunction.BLAKE3)
    )
    path = fx.blobs / "blake3" / digest.hash / str(digest.size)
    assert path.read_bytes() == data[:MIB]
    dump = sh("getfattr", "-n", "user.casfs.resource_name", str(path)).stdout.decode()
    assert f"main/blobs/blake3/{digest}" in dump


def _read_requests(server: CasfsServer, digest: Digest) -> list[tuple[int, int]]:
    pattern = re.compile(rf"Read main/blobs/{digest.hash}/{digest.size} offset=(\d+) length=(\d+)")
    return [
        (int(m[1]), int(m[2])) for m in pattern.finditer(server.log.read_text(errors="replace"))
    ]


def test_tail_of_a_4gib_blob_fetches_one_block(fx: Fixture) -> None:
    digest = zero_blob(fx.server.store, 4 << 30)
    blob = fx.blobs / digest.hash / str(digest.size)
    assert sh("tail", "-c", "100", str(blob)).stdout == bytes(100)
    requests = _read_requests(fx.server, digest)
    assert len(requests) == 1, requests  # one ranged Read, of at most a block, at the end
    offset, length = requests[0]
    assert length <= BLOCK and offset + length == 4 << 30, requests


def test_streaming_768mib_keeps_rss_bounded(tmp_path: Path) -> None:
    """A blob 24 times the block cache streams through in the cache plus the process's own
    ~60 MiB (about 84 MiB peak measured; 2 GiB through 64 MiB once, the same bound)."""
    cache = 32 * MIB
    with CasfsServer(tmp_path / "store") as server:
        digest = zero_blob(server.store, 768 * MIB)
        with CasfsMount(
            tmp_path / "mnt", "--remote", server.endpoint, "--cache-size", "32M"
        ) as mount:
            blob = mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)
            line = sh("sha256sum", str(blob)).stdout.decode()
            assert line.split()[0] == digest.hash
            peak = peak_rss_bytes(mount.pid)
    assert peak < cache + 100 * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_server_down_then_back_under_the_mount(tmp_path: Path) -> None:
    with CasfsServer(tmp_path / "store") as server:
        source = write_file(tmp_path / "src", 3 * MIB)
        digest = run_client(server.endpoint, lambda c: c.upload_file(source))
        with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--retries", "3") as mount:
            blob = mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)
            assert blob.stat().st_size == digest.size  # looked up while the server is up
            server.kill()
            failed = sh("cat", str(blob), check=False)
            assert failed.returncode != 0
            assert b"Input/output error" in failed.stderr
            assert is_mounted(mount.mountpoint)
            assert os.listdir(mount.mountpoint) == ["main"]  # the mount lives on
            giving_up = [line for line in mount.log_text().splitlines() if "giving up" in line]
            assert giving_up and "UNAVAILABLE" in giving_up[-1]
            server.start()
            # The channel reconnects within its backoff (at most a second): reads work again.
            deadline = time.monotonic() + 10
            while sh("cmp", str(source), str(blob), check=False).returncode != 0:
                assert time.monotonic() < deadline, "reads did not recover"
                time.sleep(0.2)


@pytest.mark.parametrize("how", ["fusermount", "SIGTERM", "SIGINT"])
def test_clean_unmount(tmp_path: Path, how: str) -> None:
    with CasfsServer(tmp_path / "store") as server:
        mount = CasfsMount(tmp_path / "mnt", "--remote", server.endpoint).start()
        try:
            if how == "fusermount":
                sh("fusermount3", "-u", str(mount.mountpoint))
            else:
                os.kill(mount.pid, getattr(signal, how))
            assert mount.wait() == 0
            assert not is_mounted(mount.mountpoint)
            assert "unmounted" in mount.log_text()
        finally:
            mount.stop()


def test_daemon_returns_once_mounted(tmp_path: Path) -> None:
    with CasfsServer(tmp_path / "store") as server:
        source = write_file(tmp_path / "src", 100_000)
        digest = run_client(server.endpoint, lambda c: c.upload_file(source))
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        log = tmp_path / "daemon.log"
        try:
            started = sh(
                sys.executable, "-m", "casfs", "mount", str(mountpoint), "--daemon",
                "--remote", server.endpoint, "--log-file", str(log),
                "--cache-dir", str(tmp_path / "cache"),
            )  # fmt: skip
            assert started.returncode == 0
            assert is_mounted(mountpoint)  # usable as soon as the command returns
            sh("cmp", str(source), str(mountpoint / "main" / "blobs" / str(digest)))
        finally:
            sh("fusermount3", "-u", str(mountpoint), check=False)
        assert "mounted" in log.read_text()


def test_daemon_reports_a_failed_mount(tmp_path: Path) -> None:
    failed = sh(
        sys.executable, "-m", "casfs", "mount", str(tmp_path / "absent"), "--daemon",
        "--remote", "grpc://127.0.0.1:1", "--log-file", str(tmp_path / "log"),
    check=False)  # fmt: skip
    assert failed.returncode == 1
    assert b"not a directory" in failed.stderr


def test_embedded_store_and_nested_instances(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with CasfsServer(store, "--instance", "", "--instance", "team/linux") as server:
        a = run_client(server.endpoint, lambda c: c.upload_bytes(b"root instance"), instance="")
        b = run_client(server.endpoint, lambda c: c.upload_bytes(b"nested"), instance="team/linux")
    # No --remote: the mount runs its own embedded CAS on the same store.
    args = ["--store", str(store), "--instance", "", "--instance", "team/linux"]
    with CasfsMount(tmp_path / "mnt", *args) as mount:
        root = mount.mountpoint
        assert sorted(os.listdir(root)) == [
            "actions",
            "assets",
            "blobs",
            "team",
            "trees",
            "uploads",
        ]
        assert os.listdir(root / "team") == ["linux"]
        assert (root / "blobs" / str(a)).read_bytes() == b"root instance"
        assert (root / "team" / "linux" / "blobs" / str(b)).read_bytes() == b"nested"


def test_reads_keep_working_while_many_run(fx: Fixture) -> None:
    """Random and sequential readers interleaved on one blob: every byte right."""
    source, blob = fx.upload("mixed", 16 * MIB)
    data = source.read_bytes()
    errors: list[str] = []

    def random_reader(seed: int) -> None:
        import random

        rng = random.Random(seed)
        with open(blob, "rb") as file:
            for _ in range(50):
                offset = rng.randrange(0, len(data))
                file.seek(offset)
                if file.read(4096) != data[offset : offset + 4096]:
                    errors.append(f"mismatch at {offset}")

    threads = [threading.Thread(target=random_reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    assert blob.read_bytes() == data
    for thread in threads:
        thread.join()
    assert not errors


def test_a_corrupted_blob_fails_to_read_and_keeps_failing(fx: Fixture) -> None:
    _, path = fx.upload("rotten", 5 * MIB + 3)
    hash_ = path.parent.name
    stored = fx.server.store / "cas" / "sha256" / hash_[:2] / hash_
    stored.chmod(0o600)
    with open(stored, "r+b") as file:  # bit rot on the server's disk
        file.seek(2 * MIB)
        file.write(b"\0rot")
    for _ in range(2):  # the second time too: what the page cache kept is no pass
        result = sh("cat", str(path), check=False)
        assert result.returncode != 0
        assert b"Input/output error" in result.stderr
    assert f"{hash_}/{5 * MIB + 3}: the server sent other content" in fx.mount.log_text()
