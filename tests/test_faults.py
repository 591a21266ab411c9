"""Faults under a real mount: the server killed or stalled mid-call, streams cut, full
disks, quirky servers. Each test checks what the user sees (the errno of cat or cp, how long
it takes) and that every byte committed reads back identical afterwards."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs.cas.client import CasClient
from casfs.digest import Digest
from casfs.resource import BlobName
from tests.faultproxy import FaultProxy
from tests.mounts import CasfsMount, is_mounted
from tests.servers import CasfsServer
from tests.test_client_server import MIB, download, run_client, sha256_file, write_file
from tests.test_mount_read import Fixture, sh, zero_blob

ENOSPC_TEXT = b"No space left on device"
EIO_TEXT = b"Input/output error"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only), always unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def on_server(server: CasfsServer | FaultProxy, digest: Digest, out: Path) -> str:
    """The sha256 of the blob as the server sends it (read with the plain client)."""
    run_client(server.endpoint, lambda c: download(c, digest, out))
    return sha256_file(out)


def store_is_sound(store: Path) -> int:
    """Every file under the store's cas/ hashes to its name (no partial blob is visible);
    returns how many there are."""
    blobs = list((store / "cas" / "sha256").glob("*/*"))
    for blob in blobs:
        assert sha256_file(blob) == blob.name, f"{blob} does not match its name"
    return len(blobs)


# -- a mount behind the fault proxy ----------------------------------------------------------


class ProxyFixture(Fixture):
    """The read tests' fixture, with the mount reaching the server through the proxy."""

    def __init__(self, root: Path, server: CasfsServer, proxy: FaultProxy, mount: CasfsMount):
        super().__init__(root, server, mount)
        self.proxy = proxy
        self.uploads = mount.mountpoint / "main" / "uploads"


@pytest.fixture(scope="module")
def px(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFixture]:
    root = tmp_path_factory.mktemp("faults")
    with (
        CasfsServer(root / "store") as server,
        FaultProxy(f"127.0.0.1:{server.port}") as proxy,
        CasfsMount(root / "mnt", "--remote", proxy.endpoint, "--cache-size", "32M") as mount,
    ):
        yield ProxyFixture(root, server, proxy, mount)


@pytest.fixture
def faults(px: ProxyFixture) -> Iterator[ProxyFixture]:
    px.proxy.reset()
    px.proxy.injected.clear()
    try:
        yield px
    finally:
        px.proxy.reset()


def test_read_streams_cut_mid_way_resume(faults: ProxyFixture) -> None:
    source, blob = faults.upload("cut-read", 12 * MIB + 7)
    faults.proxy.cut_reads = (MIB + MIB // 2, 3)
    sh("cmp", str(source), str(blob))
    assert faults.proxy.injected["cut_reads"] >= 1
    assert "resuming" in faults.mount.log_text()


def test_a_read_stream_that_ends_short_is_an_error_not_eof(faults: ProxyFixture) -> None:
    source, blob = faults.upload("short-read", 6 * MIB + 3)
    faults.proxy.short_reads = (1000, 10**6)  # every Read ends, status OK, after 1000 bytes
    failed = sh("cat", str(blob), check=False)
    assert failed.returncode != 0 and EIO_TEXT in failed.stderr  # never a silently short file
    assert failed.stdout == source.read_bytes()[: len(failed.stdout)]
    assert faults.proxy.injected["short_reads"] >= 1
    faults.proxy.reset()
    sh("cmp", str(source), str(blob))  # nothing wrong was cached


def test_write_streams_cut_mid_way_resume(faults: ProxyFixture) -> None:
    source = write_file(faults.root / "cut-write", 24 * MIB)
    faults.proxy.cut_writes = (5 * MIB, 2)
    sh("cp", str(source), str(faults.uploads / "cut-write"))
    assert faults.proxy.injected["cut_writes"] == 2
    digest = Digest(sha256_file(source), source.stat().st_size)
    assert on_server(faults.server, digest, faults.root / "back") == digest.hash
    sh("cmp", str(source), str(faults.uploads / "cut-write"))
    assert "resuming at offset" in faults.mount.log_text()


def test_write_restarts_where_query_write_status_is_unimplemented(faults: ProxyFixture) -> None:
    source = write_file(faults.root / "no-qws", 12 * MIB)
    faults.proxy.cut_writes = (3 * MIB, 1)
    faults.proxy.query_write_status_unimplemented = True
    sh("cp", str(source), str(faults.uploads / "no-qws"))
    assert faults.proxy.injected["cut_writes"] == 1
    assert faults.proxy.injected["query_write_status_unimplemented"] >= 1
    digest = Digest(sha256_file(source), source.stat().st_size)
    assert on_server(faults.server, digest, faults.root / "back") == digest.hash


def test_a_quirky_server(tmp_path: Path) -> None:
    """buildbox-casd's habits: limits past the end refused, batch answers in another
    order, max_batch_total_size_bytes = 0 (with a real 4 MiB message limit)."""
    with CasfsServer(tmp_path / "store") as server, FaultProxy(f"127.0.0.1:{server.port}") as proxy:
        proxy.refuse_limits_past_eof = proxy.reorder_batch_reads = proxy.max_batch_zero = True
        # The quirks are real: a raw Read with a limit past the end is refused.
        digest = run_client(server.endpoint, lambda c: c.upload_bytes(b"0123456789"))
        channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
        request = bytestream_pb2.ReadRequest(
            resource_name=BlobName("main", digest).read_name(), read_offset=5, read_limit=100
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(bytestream_pb2_grpc.ByteStreamStub(channel).Read(request))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        channel.close()

        blobs = [os.urandom(300 * 1024 + i) for i in range(30)]  # 9 MiB: more than one batch

        async def batches(client: CasClient) -> dict[Digest, bytes]:
            digests = [Digest.of_bytes(b) for b in blobs]
            await client.batch_update(list(zip(digests, blobs, strict=True)))
            return await client.batch_read(digests)

        back = run_client(proxy.endpoint, batches)
        assert back == {Digest.of_bytes(b): b for b in blobs}
        assert proxy.injected["reorder_batch_reads"] >= 1

        source = write_file(tmp_path / "src", 3 * MIB + 5)
        with CasfsMount(tmp_path / "mnt", "--remote", proxy.endpoint) as mount:
            uploads = mount.mountpoint / "main" / "uploads"
            sh("cp", str(source), str(uploads / "f"))
            (uploads / "small").write_bytes(b"a small one")
            blob = mount.mountpoint / "main" / "blobs" / sha256_file(source) / str(3 * MIB + 5)
            assert sh("tail", "-c", "100", str(blob)).stdout == source.read_bytes()[-100:]
            sh("cmp", str(source), str(blob))
            assert (uploads / "small").read_bytes() == b"a small one"
        assert proxy.injected["max_batch_zero"] >= 1
        assert proxy.injected["refuse_limits_past_eof"] == 1  # only the raw one above


# -- the real server killed or stalled -------------------------------------------------------


HASH_AFTER_A_LINE = """
import hashlib, sys
with open(sys.argv[1], "rb") as blob:
    sha = hashlib.sha256(blob.read(1 << 20))
    print("started", flush=True)
    sys.stdin.readline()
    try:
        while chunk := blob.read(1 << 20):
            sha.update(chunk)
    except OSError as error:
        sys.exit(f"sha256sum: {sys.argv[1]}: {error.strerror}")
print(sha.hexdigest(), sys.argv[1])
"""


def test_server_killed_mid_read_then_restarted(tmp_path: Path) -> None:
    with CasfsServer(tmp_path / "store") as server:
        digest = zero_blob(server.store, 512 * MIB)
        with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--retries", "3") as mount:
            blob = mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)
            assert blob.stat().st_size == digest.size
            # A reader that has read its first MiB and waits for a line before the rest:
            # the kill comes mid-read, whatever the machine's speed.
            reader = subprocess.Popen(
                [sys.executable, "-c", HASH_AFTER_A_LINE, str(blob)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert reader.stdout is not None and reader.stdout.readline() == b"started\n"
            server.kill()
            time.sleep(1.0)  # down for a while; the reads to come must outlive it or fail
            server.start()
            out, err = reader.communicate(b"go\n", timeout=120)
            if reader.returncode == 0:  # the retries outlived the restart
                assert out.decode().split()[0] == digest.hash
            else:  # a clean failure, not a hang and not wrong bytes
                assert EIO_TEXT in err, err
            assert is_mounted(mount.mountpoint)
            # The channel reconnects within its backoff (at most a second), then reads work.
            deadline = time.monotonic() + 10
            while (again := sh("sha256sum", str(blob), check=False)).returncode != 0:
                assert time.monotonic() < deadline, "reads did not recover"
                time.sleep(0.2)
            assert again.stdout.decode().split()[0] == digest.hash


def test_server_killed_mid_finalize_then_restarted(tmp_path: Path) -> None:
    size = 64 * MIB
    with (
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint) as mount,
    ):
        # Killed once the session holds every byte, verified and fsynced: as it renames
        # the upload into the store. The mount resumes it from the restarted server.
        source = write_file(tmp_path / "big", size)
        target = mount.mountpoint / "main" / "uploads" / "big"
        with server.killed_at_commit() as killed:
            sh("cp", str(source), str(target))
        assert killed, "the server was not killed"
        sh("cmp", str(source), str(target))
        digest = Digest(sha256_file(source), size)
        assert on_server(server, digest, tmp_path / "back") == digest.hash
    assert not list((server.store / "uploads").glob("*.part"))
    assert store_is_sound(server.store) == 1


def test_server_stalled_past_the_deadlines(tmp_path: Path) -> None:
    with CasfsServer(tmp_path / "store") as server:
        source, other = write_file(tmp_path / "src", MIB // 4), write_file(tmp_path / "o", MIB)
        digest = run_client(server.endpoint, lambda c: c.upload_file(source))
        # A call's deadline: 1 s, plus a second per MiB it moves; two attempts.
        args = ["--remote", server.endpoint, "--timeout", "1", "--retries", "2"]
        with CasfsMount(tmp_path / "mnt", *args) as mount:
            blob = mount.mountpoint / "main" / "blobs" / digest.hash / str(digest.size)
            uploads = mount.mountpoint / "main" / "uploads"
            assert blob.stat().st_size == digest.size
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                failed = sh("cat", str(blob), check=False)
                read_took = time.monotonic() - started
                started = time.monotonic()
                refused = sh("cp", str(other), str(uploads / "during"), check=False)
                write_took = time.monotonic() - started
                assert failed.returncode != 0 and EIO_TEXT in failed.stderr
                assert refused.returncode != 0 and EIO_TEXT in refused.stderr
                assert read_took < 15 and write_took < 15, (read_took, write_took)
                assert os.listdir(mount.mountpoint) == ["main"]  # the mount still answers
            finally:
                server.process.send_signal(signal.SIGCONT)
            sh("cmp", str(source), str(blob))
            sh("cp", str(other), str(uploads / "during"))
            sh("cmp", str(other), str(uploads / "during"))
        print(f"\nstalled server: cat failed after {read_took:.1f}s, cp after {write_took:.1f}s")


# -- full disks ------------------------------------------------------------------------------


def test_the_store_disk_full(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "store", "32m") as store,
        CasfsServer(store, "--no-fsync") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--retries", "2") as mount,
    ):
        uploads = mount.mountpoint / "main" / "uploads"
        kept = write_file(tmp_path / "kept", 2 * MIB)
        sh("cp", str(kept), str(uploads / "kept"))
        # Larger than the disk: refused, and nothing of it is kept on the server.
        huge = write_file(tmp_path / "huge", 40 * MIB)
        failed = sh("cp", str(huge), str(uploads / "huge"), check=False)
        assert failed.returncode != 0 and ENOSPC_TEXT in failed.stderr, failed.stderr
        assert not list((store / "uploads").glob("*.part")), "a dead upload holds the space"
        # A disk filled by something else: both the batch and the stream path say ENOSPC.
        filler = store / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none"])
        small, large = write_file(tmp_path / "small", 1000), write_file(tmp_path / "large", 6 * MIB)
        for source in (small, large):
            failed = sh("cp", str(source), str(uploads / source.name), check=False)
            assert failed.returncode != 0 and ENOSPC_TEXT in failed.stderr, failed.stderr
        assert is_mounted(mount.mountpoint)
        assert store_is_sound(store) == 1
        # Space comes back: the same commands work, and every byte is right.
        filler.unlink()
        resize(store, "64m")
        for source in (small, large, huge):
            sh("cp", str(source), str(uploads / source.name))
        for source in (kept, small, large, huge):
            digest = Digest(sha256_file(source), source.stat().st_size)
            assert on_server(server, digest, tmp_path / "back") == digest.hash
            sh("cmp", str(source), str(uploads / source.name))
        assert store_is_sound(store) == 4


def test_the_spool_disk_full(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "cache", "8m") as cache,
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(cache)) as m,
    ):
        uploads = m.mountpoint / "main" / "uploads"
        kept = write_file(tmp_path / "kept", 3 * MIB)
        sh("cp", str(kept), str(uploads / "kept"))
        big = write_file(tmp_path / "big", 16 * MIB)
        failed = sh("cp", str(big), str(uploads / "big"), check=False)
        assert failed.returncode != 0 and ENOSPC_TEXT in failed.stderr, failed.stderr
        # What got written before the disk filled is committed as written, a true prefix.
        partial = (uploads / "big").read_bytes()
        assert 0 < len(partial) < 16 * MIB
        assert partial == big.read_bytes()[: len(partial)]
        assert is_mounted(m.mountpoint)
        sh("cmp", str(kept), str(uploads / "kept"))
        # The spool empties as uploads commit: the next file fits.
        again = write_file(tmp_path / "again", 6 * MIB)
        sh("cp", str(again), str(uploads / "again"))
        sh("cmp", str(again), str(uploads / "again"))
        assert not list((cache / "spool").glob("*.data"))
        for source in (kept, again):
            digest = Digest(sha256_file(source), source.stat().st_size)
            assert on_server(server, digest, tmp_path / "back") == digest.hash


def test_a_full_spool_never_commits_a_hole(tmp_path: Path) -> None:
    """The kernel splits a 4 MiB write into 1 MiB requests. When one of them finds that an
    earlier, answered one never reached the full disk, the program sees a short write, not
    the error, and goes on at its own offset: that write must fail, not leave zeros where
    the lost bytes were, and whatever is committed must be a true prefix."""
    data = os.urandom(20_000_000)
    with (
        tmpfs(tmp_path / "cache", "8m") as cache,
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(cache)) as m,
    ):
        uploads = m.mountpoint / "main" / "uploads"
        for attempt in range(8):  # the loss lands on a split write only some of the time
            path = uploads / f"big{attempt}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            with pytest.raises(OSError) as full:
                try:
                    offset = 0
                    while offset < len(data):  # as cp and dd do: a short write goes on
                        offset += os.write(fd, data[offset : offset + 4 * MIB])
                finally:
                    os.close(fd)
            assert full.value.errno == errno.ENOSPC
            kept = path.read_bytes()
            assert len(kept) < len(data)
            assert kept == data[: len(kept)], f"attempt {attempt}: not a prefix"
            path.unlink()


def test_a_loss_to_a_full_spool_is_not_cleared_by_a_duplicate_close(tmp_path: Path) -> None:
    """A duplicate's close (a shell, a forked child) reports the loss and commits what
    the file holds, and the writer's next write past the cut still fails, as on a local
    disk: the file never gets a hole of zeros, even once the disk has room again.

    The writer may learn of the loss already, as a short write (the kernel splits the
    write, and a late part of it finds an early part's failure), or not: the duplicate's
    close reports it either way, and the write past the cut fails either way."""
    with (
        tmpfs(tmp_path / "cache", "8m") as cache,
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(cache)) as m,
    ):
        uploads = m.mountpoint / "main" / "uploads"
        filler = os.open(uploads / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(filler, os.urandom(3 * MIB))  # holds 3 MiB of the spool while open
        # A read through a new descriptor (an open drops the kernel's cached pages, so it
        # reaches the mount) waits until those writes are in the spool: only "out" loses.
        reader = os.open(uploads / "filler", os.O_RDONLY)
        assert len(os.pread(reader, 1, 3 * MIB - 1)) == 1
        os.close(reader)
        data = os.urandom(6 * MIB)  # more than the 5 MiB left
        fd = os.open(uploads / "out", os.O_WRONLY | os.O_CREAT, 0o644)
        duplicate = os.dup(fd)
        still_open = [duplicate, filler, fd]
        try:
            written = os.write(fd, data)
            assert 0 < written <= len(data)
            with pytest.raises(OSError) as loss:
                still_open.remove(duplicate)
                os.close(duplicate)
            assert loss.value.errno == errno.ENOSPC
            still_open.remove(filler)
            os.close(filler)  # committed: its spool goes, and the disk has room again
            with pytest.raises(OSError) as past_the_cut:
                os.write(fd, os.urandom(MIB))
            assert past_the_cut.value.errno == errno.ENOSPC
        except BaseException:
            for left in still_open:  # the loss again: it must not hide the failure
                with contextlib.suppress(OSError):
                    os.close(left)
            raise
        os.close(fd)  # nothing changed since the duplicate's close committed it
        kept = (uploads / "out").read_bytes()
        assert 0 < len(kept) < written
        assert kept == data[: len(kept)]
        assert not list((cache / "spool").glob("*.data"))


def test_a_full_spool_refuses_new_files_without_leaking(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "cache", "4m") as cache,
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(cache)) as m,
    ):
        uploads = m.mountpoint / "main" / "uploads"
        holder = open(uploads / "holder", "wb")  # noqa: SIM115 - keeps the spool full
        try:
            # Writes are answered once queued for the spool (at most 16 MiB ahead of it),
            # so the write that finds the disk full fails, or one of the next ones does.
            with pytest.raises(OSError) as full:
                for _ in range(64):
                    holder.write(os.urandom(MIB))
                    holder.flush()
            assert full.value.errno == 28  # ENOSPC
            # The failed write is cut from the spool file, which frees a little: take it.
            filler = cache / "filler"
            with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fill:
                while fill.write(b"\0" * 4096):
                    pass
            fds = len(os.listdir(f"/proc/{m.pid}/fd"))
            for i in range(20):
                with pytest.raises(OSError) as caught:
                    (uploads / f"n{i}").write_bytes(b"x")
                assert caught.value.errno == 28  # ENOSPC
            assert len(os.listdir(f"/proc/{m.pid}/fd")) <= fds + 2
            assert not [n for n in os.listdir(uploads) if n.startswith("n")]
        finally:
            with contextlib.suppress(OSError):
                holder.close()
            (cache / "filler").unlink(missing_ok=True)
        (uploads / "after").write_bytes(b"fits again")
        assert (uploads / "after").read_bytes() == b"fits again"
        assert not list((cache / "spool").glob("*.data"))  # the holder committed on close
        digest = Digest(hashlib.sha256(b"fits again").hexdigest(), 10)
        assert run_client(server.endpoint, lambda c: c.contains(digest))


# -- races and blobs that vanish -----------------------------------------------------------


def test_a_blob_that_vanishes_under_the_mount(faults: ProxyFixture) -> None:
    source, blob = faults.upload("vanishing", 2 * MIB + 1)
    assert blob.stat().st_size == 2 * MIB + 1  # looked up while it exists
    stored = faults.server.store / "cas" / "sha256" / blob.parent.name[:2] / blob.parent.name
    stored.unlink()  # evicted, or removed by an operator
    failed = sh("cat", str(blob), check=False)
    assert failed.returncode != 0 and EIO_TEXT in failed.stderr
    assert "NOT_FOUND" in faults.mount.log_text()
    run_client(faults.server.endpoint, lambda c: c.upload_file(source))  # back again
    sh("cmp", str(source), str(blob))


def test_many_uploads_of_one_blob_at_once(faults: ProxyFixture) -> None:
    source = write_file(faults.root / "same", 6 * MIB)
    work = faults.uploads / "same"
    work.mkdir()
    copies = [
        subprocess.Popen(["cp", str(source), str(work / f"c{i}")], stderr=subprocess.PIPE)
        for i in range(12)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else b"") for p in copies]
    assert all(code == 0 for code, _ in results), results
    digest = f"{sha256_file(source)}/{6 * MIB}"
    for i in range(12):
        assert os.getxattr(work / f"c{i}", "user.casfs.digest").decode() == digest
    sh("cmp", str(source), str(faults.blobs / digest))
    assert store_is_sound(faults.server.store) >= 1
    assert not list((faults.server.store / "uploads").glob("*.part"))


def test_unmount_while_the_server_is_stalled_mid_upload(tmp_path: Path) -> None:
    """SIGTERM while a close waits on a stalled server: the mount ends in bounded time,
    the file stays spooled, and the next mount uploads it once the server is back."""
    source = write_file(tmp_path / "src", 8 * MIB)
    digest = Digest(sha256_file(source), 8 * MIB)
    cache = tmp_path / "cache"
    args = ["--timeout", "1", "--retries", "2", "--cache-dir", str(cache)]
    with CasfsServer(tmp_path / "store") as server:
        assert server.process is not None
        mount = CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, *args).start()
        try:
            os.kill(server.process.pid, signal.SIGSTOP)
            target = mount.mountpoint / "main" / "uploads" / "f"
            cp = subprocess.Popen(["cp", str(source), str(target)], stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while not any(  # cp is in close(): the upload has started, the server is silent
                '"closed": true' in meta.read_text() for meta in (cache / "spool").glob("*.json")
            ):
                assert time.monotonic() < deadline, mount.log_text()[-2000:]
                time.sleep(0.02)
            started = time.monotonic()
            os.kill(mount.pid, signal.SIGTERM)
            assert mount.wait(timeout=60) == 0
            took = time.monotonic() - started
            assert "waiting up to" in mount.log_text()  # it waited for the upload in flight
            _, err = cp.communicate(timeout=30)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
            mount.stop()
        assert cp.returncode != 0 and EIO_TEXT in err, err
        assert took < 20, took
        assert len(list((cache / "spool").glob("*.data"))) == 1  # kept for the next mount
        with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, *args) as again:
            deadline = time.monotonic() + 30
            while not run_client(server.endpoint, lambda c: c.contains(digest)):
                assert time.monotonic() < deadline, again.log_text()[-2000:]
                time.sleep(0.1)
            sh("cmp", str(source), str(again.mountpoint / "main" / "uploads" / "f"))
        assert on_server(server, digest, tmp_path / "back") == digest.hash
    print(f"\nunmount with a stalled server took {took:.1f}s")
