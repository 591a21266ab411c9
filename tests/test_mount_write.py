"""The mount's write side: cp into uploads/, finalize on close, resume, recovery."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.mounts import CasfsMount, peak_rss_bytes
from tests.servers import CasfsServer
from tests.test_client_server import MIB, download, run_client, sha256_file, write_file


def sh(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=300, check=check, **kwargs)  # type: ignore[call-overload, no-any-return]


def xattr(path: Path, name: str) -> str:
    return sh("getfattr", "--only-values", "-n", name, str(path)).stdout.decode()


class Fixture:
    def __init__(self, root: Path, server: CasfsServer, mount: CasfsMount) -> None:
        self.root = root
        self.server = server
        self.mount = mount
        self.uploads = mount.mountpoint / "main" / "uploads"
        self.blobs = mount.mountpoint / "main" / "blobs"

    def on_server(self, digest: Digest) -> bytes:
        out = self.root / f"from-server-{digest.hash[:12]}"
        run_client(self.server.endpoint, lambda c: download(c, digest, out))
        return out.read_bytes()


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("write")
    with (
        CasfsServer(root / "store") as server,
        CasfsMount(
            root / "mnt", "--remote", server.endpoint, "--cache-dir", str(root / "cache")
        ) as mount,
    ):
        yield Fixture(root, server, mount)


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 300 * MIB], ids=lambda s: f"{s}B")
def test_cp_in_and_read_back(fx: Fixture, size: int) -> None:
    source = write_file(fx.root / f"src-{size}", size)
    target = fx.uploads / f"file-{size}"
    sh("cp", str(source), str(target))
    expected = f"{sha256_file(source)}/{size}"
    assert xattr(target, "user.casfs.digest") == expected
    assert xattr(target, "user.casfs.resource_name") == f"main/blobs/{expected}"
    sh("cmp", str(source), str(target))  # the upload reads back, now from the CAS
    sh("cmp", str(source), str(fx.blobs / expected))
    digest = Digest.parse(expected)
    if size < 4 * MIB:
        assert fx.on_server(digest) == source.read_bytes()
    else:
        assert run_client(fx.server.endpoint, lambda c: c.contains(digest))
    assert target.stat().st_mode & 0o222 == 0  # committed: read-only now
    assert not list((fx.root / "cache" / "spool").glob("*.data"))  # nothing left spooled


def _directory_digest(path: Path) -> Digest:
    """The REAPI Directory digest of a local tree, computed independently of casfs."""
    message = re_pb2.Directory()
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if child.is_symlink():
            message.symlinks.add(name=child.name, target=os.readlink(child))
        elif child.is_dir():
            message.directories.add(name=child.name, digest=_directory_digest(child).to_proto())
        else:
            data = child.read_bytes()
            message.files.add(
                name=child.name,
                digest=Digest.of_bytes(data).to_proto(),
                is_executable=os.access(child, os.X_OK),
            )
    return Digest.of_bytes(message.SerializeToString())


def test_cp_r_of_a_tree_has_one_digest(fx: Fixture) -> None:
    tree = fx.root / "tree"
    (tree / "src" / "lib").mkdir(parents=True)
    (tree / "README").write_text("a tree\n")
    (tree / "src" / "main.c").write_text("int main() { return 0; }\n")
    (tree / "src" / "lib" / "big.bin").write_bytes(os.urandom(5 * MIB))
    (tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "empty").mkdir()
    os.symlink("src/main.c", tree / "link")
    sh("cp", "-r", str(tree), str(fx.uploads))
    uploaded = fx.uploads / "tree"
    expected = _directory_digest(tree)
    assert xattr(uploaded, "user.casfs.digest") == str(expected)
    assert os.readlink(uploaded / "link") == "src/main.c"
    assert os.access(uploaded / "run.sh", os.X_OK)
    sh("diff", "-r", str(tree), str(uploaded))

    async def tree_on_server(client: CasClient) -> int:
        root = re_pb2.Directory.FromString(await client.read_blob(expected))
        return len(root.files) + len(root.directories) + len(root.symlinks)

    assert run_client(fx.server.endpoint, tree_on_server) == 5


def test_everyday_file_operations(fx: Fixture) -> None:
    work = fx.uploads / "ops"
    work.mkdir()
    sh("sh", "-c", f"echo hello > {work / 'greeting'}")  # closes a dup before writing
    assert (work / "greeting").read_text() == "hello\n"
    sh("dd", "if=/dev/urandom", f"of={work / 'dd.bin'}", "bs=64k", "count=40", "status=none")
    assert (work / "dd.bin").stat().st_size == 40 * 65536
    # Writes in any order, a truncate, then close: rehashed, uploaded as written.
    data = bytearray(os.urandom(3 * MIB))
    with open(work / "scattered", "wb") as file:
        for offset in (2 * MIB, 0, MIB):
            file.seek(offset)
            file.write(data[offset : offset + MIB])
        file.truncate(3 * MIB - 10)
    del data[3 * MIB - 10 :]
    assert (work / "scattered").read_bytes() == bytes(data)
    assert xattr(work / "scattered", "user.casfs.digest") == str(Digest.of_bytes(bytes(data)))
    sh("touch", str(work / "empty"))
    assert xattr(work / "empty", "user.casfs.digest") == str(Digest.empty())
    os.rename(work / "greeting", work / "renamed")
    assert sorted(os.listdir(work)) == ["dd.bin", "empty", "renamed", "scattered"]
    os.unlink(work / "renamed")
    (work / "sub").mkdir()
    with pytest.raises(OSError, match="Directory not empty"):
        os.rmdir(work)
    os.rmdir(work / "sub")
    # A committed file can be replaced (O_TRUNC), not modified in place.
    sh("sh", "-c", f"echo again > {work / 'dd.bin'}")
    assert (work / "dd.bin").read_text() == "again\n"
    appended = sh("sh", "-c", f"echo more >> {work / 'dd.bin'}", check=False)
    assert appended.returncode != 0


DIRECT_WRITERS = {
    "cp": lambda source, target: ["cp", str(source), str(target)],
    # The shell opens the name, moves the descriptor to 1 and closes the first one (a
    # close with nothing written yet), then cat writes and closes.
    "redirect": lambda source, target: ["bash", "-c", f"cat {source} > {target}"],
}


@pytest.mark.parametrize("writer", sorted(DIRECT_WRITERS))
def test_direct_writes_are_verified(fx: Fixture, writer: str) -> None:
    command = DIRECT_WRITERS[writer]
    data = os.urandom(2 * MIB + 3)
    digest = Digest.of_bytes(data)
    good = fx.root / f"good-{writer}"
    good.write_bytes(data)
    bad = fx.root / f"bad-{writer}"
    bad.write_bytes(os.urandom(len(data)))
    target = fx.blobs / digest.hash / str(digest.size)
    failed = sh(*command(bad, target), check=False)
    assert failed.returncode != 0 and b"Input/output error" in failed.stderr, failed.stderr
    assert not run_client(fx.server.endpoint, lambda c: c.contains(digest))
    sh(*command(good, target))
    assert fx.on_server(digest) == data
    sh(*command(good, target))  # already there: success without an upload
    assert target.read_bytes() == data


def test_bad_names_and_places(fx: Fixture) -> None:
    source = fx.root / "small"
    source.write_bytes(b"x")
    for place in [fx.blobs / "newfile", fx.mount.mountpoint / "main" / "x", fx.blobs / "abc"]:
        assert sh("cp", str(source), str(place), check=False).returncode != 0
    with pytest.raises(OSError):
        os.mkdir(fx.blobs / "dir")


def test_server_killed_mid_upload_resumes(tmp_path: Path) -> None:
    size = 300 * MIB
    source = write_file(tmp_path / "big", size)
    with CasfsServer(tmp_path / "store") as server:
        with CasfsMount(
            tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(tmp_path / "c")
        ) as mount:
            with server.killed_mid_upload(after=32 * MIB) as killed_at:
                sh("cp", str(source), str(mount.mountpoint / "main" / "uploads" / "big"))
            assert killed_at and killed_at[0] < size, "the upload finished before the kill"
            resumed = re.findall(r"resuming at offset (\d+)", mount.log_text())
            assert resumed and int(resumed[0]) > 0, mount.log_text()[-2000:]
        digest = Digest(sha256_file(source), size)
        run_client(server.endpoint, lambda c: download(c, digest, tmp_path / "back"))
    assert sha256_file(tmp_path / "back") == digest.hash


def test_server_down_for_good_then_next_mount_finishes(tmp_path: Path) -> None:
    source = write_file(tmp_path / "src", 5 * MIB)
    digest = Digest(sha256_file(source), 5 * MIB)
    cache = tmp_path / "cache"
    mountpoint = tmp_path / "mnt"
    with CasfsServer(tmp_path / "store") as server:
        args = ["--cache-dir", str(cache), "--retries", "2"]
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args) as mount:
            server.kill()
            failed = sh("cp", str(source), str(mountpoint / "main" / "uploads" / "f"), check=False)
            assert failed.returncode != 0
            assert b"Input/output error" in failed.stderr
            mount.wait_for_log("stays spooled")
        assert len(list((cache / "spool").glob("*.data"))) == 1  # kept for the next mount
        server.start()
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args) as mount:
            deadline = time.monotonic() + 30
            while not run_client(server.endpoint, lambda c: c.contains(digest)):
                assert time.monotonic() < deadline, mount.log_text()[-2000:]
                time.sleep(0.1)
            assert "finishing 1 upload(s) left by a previous mount" in mount.log_text()
            sh("cmp", str(source), str(mountpoint / "main" / "uploads" / "f"))
        assert not list((cache / "spool").glob("*.data"))


def test_rss_while_writing_768mib(tmp_path: Path) -> None:
    """768 MiB written through a 32 MiB cache: the mount stays within the cache plus its
    own ~60 MiB (about 81 MiB peak measured; 2 GiB through 64 MiB once, the same bound)."""
    with CasfsServer(tmp_path / "store", "--no-fsync") as server, CasfsMount(
        tmp_path / "mnt",
        "--remote", server.endpoint, "--cache-size", "32M", "--cache-dir", str(tmp_path / "c"),
    ) as mount:  # fmt: skip
        target = mount.mountpoint / "main" / "uploads" / "big"
        sh("dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=768", "status=none")
        assert xattr(target, "user.casfs.digest").endswith(f"/{768 * MIB}")
        peak = peak_rss_bytes(mount.pid)
    assert peak < 32 * MIB + 100 * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_unmount_waits_for_an_upload_in_flight(tmp_path: Path) -> None:
    source = write_file(tmp_path / "src", 200 * MIB)
    with CasfsServer(tmp_path / "store") as server:
        mount = CasfsMount(
            tmp_path / "mnt", "--remote", server.endpoint, "--cache-dir", str(tmp_path / "c")
        ).start()
        try:
            target = mount.mountpoint / "main" / "uploads" / "f"
            cp = subprocess.Popen(["cp", str(source), str(target)], stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while "uploaded" not in mount.log_text() and not list(
                (server.store / "uploads").glob("*.part")
            ):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            os.kill(mount.pid, signal.SIGTERM)  # while the upload is in flight
            _, err = cp.communicate(timeout=120)
            assert cp.returncode == 0, err
            assert mount.wait() == 0
            log = mount.log_text()
            if log.index("SIGTERM: unmounting") < log.index("uploaded f"):
                assert "waiting up to" in log, log[-2000:]  # it waited, and said so
        finally:
            mount.stop()
        digest = Digest(sha256_file(source), 200 * MIB)
        assert run_client(server.endpoint, lambda c: c.contains(digest))


def test_spool_files_are_private(fx: Fixture) -> None:
    spool = fx.root / "cache" / "spool"
    with open(fx.uploads / "private", "wb") as file:
        file.write(b"secret")
        file.flush()
        spooled = list(spool.glob("*.data"))
        assert spooled and all(p.stat().st_mode & 0o777 == 0o600 for p in spooled)
        assert (fx.root / "cache").stat().st_mode & 0o777 == 0o700


def test_every_descriptor_may_write_until_its_close(fx: Fixture) -> None:
    work = fx.uploads / "descriptors"
    work.mkdir()
    sh("sh", "-c", f"{{ /bin/echo one; /bin/echo two; }} > {work / 'group'}")
    assert (work / "group").read_text() == "one\ntwo\n"
    sh("bash", "-c", f"exec 3>{work / 'log'}; echo a >&3; echo b >&3; exec 3>&-")
    assert (work / "log").read_text() == "a\nb\n"
    path = work / "fsynced"
    with open(path, "wb") as file:
        file.write(b"first ")
        file.flush()
        os.fsync(file.fileno())  # commits "first "
        file.write(b"second")  # pending again; the close commits the whole
    assert xattr(path, "user.casfs.digest") == str(Digest.of_bytes(b"first second"))
    fd = os.open(work / "dup", os.O_WRONLY | os.O_CREAT)
    copy = os.dup(fd)
    os.close(fd)  # the first close commits the empty file
    os.write(copy, b"through the duplicate")
    os.close(copy)
    assert (work / "dup").read_bytes() == b"through the duplicate"
    assert xattr(work / "dup", "user.casfs.digest") == str(
        Digest.of_bytes(b"through the duplicate")
    )


def test_a_shared_mapping_writes_the_file(fx: Fixture) -> None:
    """A read-write descriptor may be mapped and written through the mapping (as linkers
    write their output); write-only descriptors, which go around the page cache, may not
    be mapped at all, so nothing that worked before is refused."""
    path = fx.uploads / "mapped"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, MIB + 5)
        with mmap.mmap(fd, MIB + 5, mmap.MAP_SHARED) as mapping:
            mapping[:5] = b"start"
            mapping[-3:] = b"end"
            mapping.flush()
    finally:
        os.close(fd)
    expected = b"start" + bytes(MIB - 3) + b"end"
    digest = Digest.of_bytes(expected)
    assert xattr(path, "user.casfs.digest") == str(digest)
    assert fx.on_server(digest) == expected


def test_a_reader_sees_what_a_write_only_descriptor_wrote_since(fx: Fixture) -> None:
    """``tail -f`` on a file being appended to: a reader never gets stale bytes for what a
    write-only descriptor (whose writes skip the page cache) wrote after it read. (Each
    read here also refreshes the file's attributes, whose change drops cached pages; a
    review checked separately that Linux 6.18 keeps the pages right without it, too.)"""
    path = fx.uploads / "growing.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    reader = os.open(path, os.O_RDONLY)
    try:
        os.write(writer, b"line one\n")
        assert os.read(reader, 100) == b"line one\n"
        os.write(writer, b"line two\n")
        assert os.read(reader, 100) == b"line two\n"
        overwriter = os.open(path, os.O_WRONLY)
        os.pwrite(overwriter, b"LINE", 0)
        os.close(overwriter)
        assert os.pread(reader, 100, 0) == b"LINE one\nline two\n"
    finally:
        os.close(reader)
        os.close(writer)
    tail = sh("tail", "-c", "9", str(path)).stdout
    assert tail == b"line two\n"


def test_writes_answered_before_they_land_are_all_there(fx: Fixture) -> None:
    """Large writes are answered once queued for the spool file (a worker lands them):
    a read through another descriptor, a truncate, an overwrite and fsync all see every
    write answered before them, in order."""
    path = fx.uploads / "behind"
    data = bytearray(os.urandom(24 * MIB))
    with open(path, "wb", buffering=0) as writer, open(path, "rb", buffering=0) as reader:
        for offset in range(0, 16 * MIB, MIB):
            writer.write(data[offset : offset + MIB])
        # from the mount, not from the pages the kernel kept of the writes
        os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(reader.fileno(), 16 * MIB, 0) == data[: 16 * MIB]
        os.pwrite(writer.fileno(), b"x" * MIB, 3 * MIB)  # rewrite a block in the middle
        data[3 * MIB : 4 * MIB] = b"x" * MIB
        os.truncate(writer.fileno(), 12 * MIB)
        del data[12 * MIB :]
        writer.seek(12 * MIB)
        writer.write(bytes(data[: 8 * MIB]))
        data += data[: 8 * MIB]
        os.fsync(writer.fileno())
        assert xattr(path, "user.casfs.digest") == str(Digest.of_bytes(bytes(data)))
    assert path.read_bytes() == data
    assert fx.on_server(Digest.of_bytes(bytes(data))) == data


def test_concurrent_closes_all_commit(fx: Fixture) -> None:
    work = fx.uploads / "closes"
    work.mkdir()

    def writer(i: int) -> None:
        with open(work / f"f{i}", "wb") as file:
            file.write(os.urandom(100_000))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(16):
        data = (work / f"f{i}").read_bytes()
        assert xattr(work / f"f{i}", "user.casfs.digest") == str(Digest.of_bytes(data))


def test_unlinked_open_file_keeps_working(fx: Fixture) -> None:
    path = fx.uploads / "scratch"
    with open(path, "w+b") as file:
        file.write(b"temporary")
        os.unlink(path)
        file.write(b" data")
        file.seek(0)
        assert file.read() == b"temporary data"
    assert not path.exists()


def test_rename_keeps_mtime_and_bad_names_are_refused(fx: Fixture) -> None:
    path = fx.uploads / "dated"
    path.write_bytes(b"old")
    os.utime(path, (978307200, 978307200))  # 2001-01-01
    os.rename(path, fx.uploads / "dated2")
    time.sleep(1.2)  # past the attribute timeout
    assert (fx.uploads / "dated2").stat().st_mtime == 978307200
    with pytest.raises(OSError) as caught:
        open(os.fsencode(fx.uploads) + b"/\xfe.bin", "wb").close()
    assert caught.value.errno == errno.EINVAL


def test_failed_direct_write_leaves_nothing(fx: Fixture) -> None:
    digest = Digest.of_bytes(b"the real content")
    bad = fx.root / "bad-direct"
    bad.write_bytes(b"not the content!")
    before = sorted((fx.root / "cache" / "spool").iterdir())
    result = sh("cp", str(bad), str(fx.blobs / digest.hash / str(digest.size)), check=False)
    assert result.returncode != 0
    # The spool goes with the last release, which the kernel sends after close() returns.
    deadline = time.monotonic() + 10
    while sorted((fx.root / "cache" / "spool").iterdir()) != before:
        assert time.monotonic() < deadline, "the refused direct write is still spooled"
        time.sleep(0.05)


def test_a_refused_write_through_a_read_write_descriptor_leaves_the_blob_intact(
    fx: Fixture,
) -> None:
    """A read-write descriptor writes through the kernel's page cache of the blob's own
    file: once the close refuses the content, readers must still get the blob's bytes."""
    data = os.urandom(3 * 4096 + 5)
    digest = run_client(fx.server.endpoint, lambda c: c.upload_bytes(data))
    target = fx.blobs / digest.hash / str(digest.size)
    with open(target, "rb") as reader:
        assert reader.read() == data  # cached by the kernel now
        with pytest.raises(OSError) as refused, open(target, "r+b") as file:
            file.write(b"not the blob")
        assert refused.value.errno == errno.EIO
        assert os.pread(reader.fileno(), len(data), 0) == data
    assert target.read_bytes() == data
    assert sh("cat", str(target)).stdout == data


def test_a_file_never_closed_is_not_uploaded_after_a_crash(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with CasfsServer(tmp_path / "store") as server:
        mountpoint = tmp_path / "mnt"
        mount = CasfsMount(mountpoint, "--remote", server.endpoint, "--cache-dir", str(cache))
        mount.start()
        try:
            writer = open(mountpoint / "main" / "uploads" / "half", "wb")  # noqa: SIM115
            writer.write(b"half of what was meant")
            writer.flush()  # to the mount, not closed
            os.kill(mount.pid, signal.SIGKILL)
            mount.wait()
            with contextlib.suppress(OSError):
                writer.close()
        finally:
            mount.stop()
        with CasfsMount(mountpoint, "--remote", server.endpoint, "--cache-dir", str(cache)) as m:
            half = mountpoint / "main" / "uploads" / "half"
            assert half.read_bytes() == b"half of what was meant"  # kept, pending
            assert "was never closed" in m.log_text()
            digest = Digest.of_bytes(b"half of what was meant")
            assert not run_client(server.endpoint, lambda c: c.contains(digest))


def test_a_bad_spool_file_does_not_stop_the_mount(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "spool").mkdir(parents=True)
    (cache / "spool" / "junk.data").write_bytes(b"x")
    (cache / "spool" / "junk.json").write_text('{"instance": "main", "expected": "zz"}')
    (cache / "spool" / "orphan.data").write_bytes(b"no metadata")
    with CasfsServer(tmp_path / "store") as server:
        args = ["--remote", server.endpoint, "--cache-dir", str(cache)]
        with CasfsMount(tmp_path / "mnt", *args) as mount:
            (mount.mountpoint / "main" / "uploads" / "ok").write_bytes(b"works")
            assert "cannot bring back junk.data" in mount.log_text()
            assert mount.process is not None and mount.process.poll() is None
    assert not (cache / "spool" / "orphan.data").exists()


def test_a_shell_redirect_uploads_once(fx: Fixture) -> None:
    """The shell opens with O_TRUNC and closes a duplicate before echo writes: that close
    commits an empty file, which must cost no call and say nothing; the upload the log
    reports is the one of what echo wrote."""
    before = len(fx.mount.log_text())
    sh("bash", "-c", f"echo redirected > {fx.uploads / 'redirect'}")
    assert (fx.uploads / "redirect").read_bytes() == b"redirected\n"
    said = fx.mount.log_text()[before:]
    assert said.count("uploaded") == 1, said
    assert EMPTY.hash not in said, said


EMPTY = Digest.of_bytes(b"")


def test_a_write_during_another_descriptors_commit_waits_and_is_committed(fx: Fixture) -> None:
    """One descriptor closes (and so commits) while another goes on writing: the writes
    that come during the commit wait for it instead of failing with EBUSY, and the
    second close commits every byte, with no hole where a write was refused."""
    path = fx.uploads / "two-descriptors"
    head = os.urandom(64 * MIB)  # enough that its commit takes a while
    first = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(first, head)
    second = os.open(path, os.O_WRONLY)
    started, first_closed = threading.Event(), threading.Event()
    written: list[bytes] = []
    failures: list[OSError] = []

    def keep_writing() -> None:
        offset = len(head)
        try:
            while len(written) < 64 or not first_closed.is_set():
                piece = os.urandom(64 * 1024)
                assert os.pwrite(second, piece, offset) == len(piece)
                written.append(piece)
                offset += len(piece)
                started.set()
        except OSError as error:
            failures.append(error)
            started.set()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert started.wait(timeout=60)
        os.close(first)  # commits what is there now, while the writer goes on
        first_closed.set()
        writer.join(timeout=120)
        assert not writer.is_alive()
        assert not failures, failures
    finally:
        first_closed.set()
        writer.join(timeout=120)
        os.close(second)  # commits it all again
    expected = head + b"".join(written)
    assert xattr(path, "user.casfs.digest") == str(Digest.of_bytes(expected))
    assert fx.on_server(Digest.of_bytes(expected)) == expected


def test_writers_that_truncate_one_name_get_no_ebusy(fx: Fixture) -> None:
    """Eight programs at once, each writing its own content into one name with O_TRUNC,
    round after round: every write and close succeeds or fails for a real reason (EBUSY
    is none), and the committed blob is always the file's bytes."""
    path = fx.uploads / "contended"
    errors: list[OSError] = []

    def write_once(index: int) -> None:
        try:
            with open(path, "wb") as file:
                file.write(bytes([index]) * (MIB + index))
        except OSError as error:
            errors.append(error)

    for _ in range(15):
        threads = [threading.Thread(target=write_once, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        data = path.read_bytes()
        assert xattr(path, "user.casfs.digest") == str(Digest.of_bytes(data))


def test_sync_of_a_pending_file_retries_its_upload(tmp_path: Path) -> None:
    """``sync FILE`` opens the file read-only and fsyncs it: that retries a failed upload
    too, and says whether it worked."""
    source = write_file(tmp_path / "src", 3 * MIB)
    digest = Digest(sha256_file(source), 3 * MIB)
    with CasfsServer(tmp_path / "store") as server:
        args = ["--cache-dir", str(tmp_path / "cache"), "--retries", "2"]
        with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, *args) as mount:
            target = mount.mountpoint / "main" / "uploads" / "f"
            server.kill()
            assert sh("cp", str(source), str(target), check=False).returncode != 0
            still_down = sh("sync", str(target), check=False)
            assert still_down.returncode != 0 and b"Input/output error" in still_down.stderr
            server.start()
            deadline = time.monotonic() + 30  # the channel reconnects within its backoff
            while sh("sync", str(target), check=False).returncode != 0:
                assert time.monotonic() < deadline, mount.log_text()[-2000:]
                time.sleep(0.2)
            assert xattr(target, "user.casfs.digest") == str(digest)
        assert on_server_bytes(server, digest, tmp_path / "back") == source.read_bytes()


def on_server_bytes(server: CasfsServer, digest: Digest, out: Path) -> bytes:
    run_client(server.endpoint, lambda c: download(c, digest, out))
    return out.read_bytes()
