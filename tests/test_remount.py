"""uploads/ keeps its names across a remount of the same cache directory: after a clean
unmount, a SIGTERM and a SIGKILL of the mount, every file, directory and symlink is back
with its mode, size, mtime and digest, and its content reads back from the CAS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs.cas.assets import FetchedAsset
from casfs.cas.errors import CasError
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_assets_server import fetch
from tests.test_client_server import MIB


def sh(*args: str) -> bytes:
    return subprocess.run(list(args), capture_output=True, timeout=120, check=True).stdout


Listing = dict[str, tuple[object, ...]]


def listing(uploads: Path) -> Listing:
    """What ``ls -lR`` and ``getfattr`` show of every name under ``uploads``: type, mode,
    size, mtime, and the digest of files or the target of symlinks."""
    seen: Listing = {}
    for top, dirs, files in os.walk(uploads):
        for name in dirs + files:
            path = Path(top) / name
            info = path.lstat()
            shown: tuple[object, ...] = (stat.filemode(info.st_mode), info.st_size)
            shown += (info.st_mtime_ns,)
            if stat.S_ISLNK(info.st_mode):
                shown += (os.readlink(path),)
            elif stat.S_ISREG(info.st_mode):
                shown += (os.getxattr(path, "user.casfs.digest").decode(),)
            seen[str(path.relative_to(uploads))] = shown
    return seen


def make_tree(tmp_path: Path, uploads: Path) -> dict[str, bytes]:
    """A tree made by tar -x and everyday commands; returns each file's content."""
    source = tmp_path / "source"
    (source / "src" / "lib").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "README").write_bytes(b"a tree\n")
    (source / "src" / "lib" / "big.bin").write_bytes(os.urandom(3 * MIB + 5))
    (source / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (source / "run.sh").chmod(0o755)
    (source / "private").write_bytes(b"for my eyes\n")
    (source / "private").chmod(0o600)
    (source / "gone").write_bytes(b"removed before the remount\n")
    os.utime(source / "README", ns=(1_000_000_000, 1_234_567_890_123_456_789))
    os.symlink("src/lib/big.bin", source / "link")
    sh("tar", "-C", str(source), "-cf", str(tmp_path / "tree.tar"), ".")
    sh("tar", "-C", str(uploads), "--no-same-owner", "-xf", str(tmp_path / "tree.tar"))

    sh("rm", str(uploads / "gone"))
    sh("mv", str(uploads / "README"), str(uploads / "src" / "README.moved"))
    sh("mkdir", "-p", str(uploads / "made" / "empty-too"))
    sh("ln", "-s", "../run.sh", str(uploads / "made" / "run"))
    sh("chmod", "0700", str(uploads / "run.sh"))
    sh("touch", "-d", "2001-02-03 04:05:06", str(uploads / "private"))
    (uploads / "later").write_bytes(b"written through the mount\n")
    sh("mv", str(uploads / "src" / "lib"), str(uploads / "made" / "lib"))
    return {
        "src/README.moved": b"a tree\n",
        "made/lib/big.bin": (source / "src" / "lib" / "big.bin").read_bytes(),
        "run.sh": b"#!/bin/sh\necho hi\n",
        "private": b"for my eyes\n",
        "later": b"written through the mount\n",
    }


def _gone(mount: CasfsMount, how: str) -> None:
    """End the mount as ``how`` says, and wait for its process."""
    if how == "unmount":
        assert mount.stop() == 0
        return
    os.kill(mount.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    mount.wait()
    mount.stop()  # a killed mount is left stale: clean it up


@contextlib.contextmanager
def mounted(tmp_path: Path, server: CasfsServer) -> Iterator[CasfsMount]:
    with new_mount(tmp_path, server) as mount:
        yield mount


def new_mount(tmp_path: Path, server: CasfsServer) -> CasfsMount:
    """A mount of ``tmp_path/mnt`` with the cache directory all of a test's mounts share.
    (No remote check: its 5 s deadline is what a loaded CI machine misses, not the test.)"""
    args = ("--remote", server.endpoint, "--cache-dir", str(tmp_path / "cache"))
    return CasfsMount(tmp_path / "mnt", *args, "--no-check-remote")


@pytest.mark.parametrize("how", ["unmount", "sigterm", "sigkill"])
def test_names_survive_a_remount(tmp_path: Path, how: str) -> None:
    with CasfsServer(tmp_path / "store") as server:
        mount = new_mount(tmp_path, server)
        with mount:
            uploads = mount.mountpoint / "main" / "uploads"
            contents = make_tree(tmp_path, uploads)
            before = listing(uploads)
            tree_digest = os.getxattr(uploads, "user.casfs.digest")
            _gone(mount, how)

        with mounted(tmp_path, server) as again:
            uploads = again.mountpoint / "main" / "uploads"
            assert listing(uploads) == before
            assert "gone" not in before and "made/empty-too" in before and "empty" in before
            assert before["src/README.moved"][2] == 1_234_567_890 * 10**9  # tar keeps seconds
            for name, data in contents.items():
                assert sh("cat", str(uploads / name)) == data, name
            assert sh("cat", str(uploads / "made" / "run")) == b"#!/bin/sh\necho hi\n"
            assert os.getxattr(uploads, "user.casfs.digest") == tree_digest
            # committed files have no spool: their content came from the CAS
            assert not list((tmp_path / "cache" / "spool").glob("*.data"))
            # and the names go on changing, and persist again
            sh("rm", "-r", str(uploads / "made"))
            after = listing(uploads)
        with mounted(tmp_path, server) as third:
            assert listing(third.mountpoint / "main" / "uploads") == after


def test_a_pending_file_wins_over_its_committed_name(tmp_path: Path) -> None:
    """A committed file rewritten (O_TRUNC) and not closed when the mount is killed comes
    back with what was written, pending, not with its committed content; the committed
    file next to it comes back too."""
    with CasfsServer(tmp_path / "store") as server:
        mount = new_mount(tmp_path, server)
        with mount:
            file = mount.mountpoint / "main" / "uploads" / "notes"
            file.write_bytes(b"first version\n")
            (file.parent / "kept").write_bytes(b"committed, never touched again\n")
            writer = open(file, "wb")  # noqa: SIM115 - left open on purpose
            writer.write(b"second version, never closed\n")
            writer.flush()
            os.kill(mount.pid, signal.SIGKILL)
            mount.wait()
            with contextlib.suppress(OSError):
                writer.close()
        with mounted(tmp_path, server) as again:
            file = again.mountpoint / "main" / "uploads" / "notes"
            assert file.read_bytes() == b"second version, never closed\n"
            assert os.listxattr(file) == []  # pending: no digest
            assert file.stat().st_mode & 0o200  # still writable
            assert (file.parent / "kept").read_bytes() == b"committed, never touched again\n"


def test_a_torn_line_and_a_stale_journal_are_skipped(tmp_path: Path) -> None:
    """What a power loss or a crash mid-compaction leaves in <cache dir>/names: a torn
    last record, and the journal of the generation before the snapshot, are skipped with
    a warning; the names come back as they were."""
    names = tmp_path / "cache" / "names"
    with CasfsServer(tmp_path / "store") as server:
        with mounted(tmp_path, server) as mount:
            uploads = mount.mountpoint / "main" / "uploads"
            (uploads / "dir").mkdir()
            (uploads / "dir" / "file").write_bytes(b"content\n")
            before = listing(uploads)
        generation = int(next(names.glob("journal.*")).name.split(".")[1])
        with open(names / f"journal.{generation}", "a") as journal:
            journal.write('{"rm": "dir", "i": "main"}\n{"put": "file", "i": "ma')  # torn
        # An older generation's journal, which the snapshot already holds, is not replayed.
        stale = names / f"journal.{generation - 1}"
        stale.write_text('{"put": "dir", "i": "main", "p": "stale", "mtime": 0}\n')
        with mounted(tmp_path, server) as again:
            uploads = again.mountpoint / "main" / "uploads"
            assert listing(uploads) == {}  # the rm before the torn line was replayed
            assert f"journal.{generation} line 2 is not a record" in again.log_text()
            assert not stale.exists()
        (tmp_path / "cache" / "names" / "snapshot").write_text("not json\n")
        with mounted(tmp_path, server) as third:
            assert listing(third.mountpoint / "main" / "uploads") == {}
            assert "has no generation" in third.log_text()
            assert (names / "snapshot.corrupt").read_text() == "not json\n"  # kept
    assert before  # (the tree was there before the rm)


def test_an_upload_keeps_its_asset_name_across_a_remount(tmp_path: Path) -> None:
    """uploads/: a file's URI and qualifiers come back with it after a remount, the
    committed file's (pushed by the first mount, not again by the second) and those of a
    file whose upload failed at its close (the server down): the next mount uploads that
    one and then pushes it under its name."""
    args = ("--cache-dir", str(tmp_path / "cache"), "--retries", "2", "--no-check-remote")
    mountpoint = tmp_path / "mnt"
    uploads = mountpoint / "main" / "uploads"
    with CasfsServer(tmp_path / "store") as server:
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args) as mount:
            with open(uploads / "named.txt", "wb") as file:
                file.write(b"named\n")
                os.setxattr(uploads / "named.txt", "user.casfs.uri", b"urn:named:1")
                os.setxattr(uploads / "named.txt", "user.casfs.qualifier.kind", b"notes")
            assert fetch(server.endpoint, ["urn:named:1"]).digest.size == 6
            stuck = open(uploads / "stuck.txt", "wb")  # noqa: SIM115 - closed below
            stuck.write(b"stuck at its close\n")
            os.setxattr(uploads / "stuck.txt", "user.casfs.uri", b"urn:stuck:1")
            os.setxattr(uploads / "stuck.txt", "user.casfs.qualifier.kind", b"log")
            server.kill()
            with pytest.raises(OSError):
                stuck.close()
            mount.wait_for_log("stays spooled")
        server.start()
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args) as mount:
            deadline = time.monotonic() + 30
            while (found := _fetched(server.endpoint, "urn:stuck:1")) is None:
                assert time.monotonic() < deadline, mount.log_text()[-2000:]
                time.sleep(0.1)
            assert found.digest.size == len(b"stuck at its close\n")
            assert found.qualifiers["kind"] == "log"
            for name, uri, kind in (("named.txt", "urn:named:1", "notes"),
                                    ("stuck.txt", "urn:stuck:1", "log")):  # fmt: skip
                assert os.getxattr(uploads / name, "user.casfs.uri") == uri.encode()
                assert os.getxattr(uploads / name, "user.casfs.qualifier.kind") == kind.encode()
            status = json.loads(os.getxattr(mountpoint, "user.casfs.status"))
            assert status["assets"]["pushes"] == 1, status["assets"]  # stuck.txt's only


def test_a_saved_asset_name_the_checks_refuse_loses_the_name_not_the_file(
    tmp_path: Path,
) -> None:
    """A journaled asset name that no longer passes the checks (here: damaged to hold a
    space) is dropped at the next mount, with a warning; the file comes back with its
    bytes and digest."""
    args = ("--cache-dir", str(tmp_path / "cache"))
    mountpoint = tmp_path / "mnt"
    uploads = mountpoint / "main" / "uploads"
    with CasfsServer(tmp_path / "store") as server:
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args):
            (uploads / "kept.txt").write_bytes(b"kept\n")
            os.setxattr(uploads / "kept.txt", "user.casfs.uri", b"urn:kept:1")
            digest = os.getxattr(uploads / "kept.txt", "user.casfs.digest")
        damaged = 0
        for saved in (tmp_path / "cache").rglob("*"):
            if saved.is_file() and b"urn:kept:1" in saved.read_bytes():
                saved.write_bytes(saved.read_bytes().replace(b"urn:kept:1", b"urn:kept 1"))
                damaged += 1
        assert damaged, "the URI was saved nowhere in the cache directory"
        with CasfsMount(mountpoint, "--remote", server.endpoint, *args) as mount:
            assert (uploads / "kept.txt").read_bytes() == b"kept\n"
            assert os.getxattr(uploads / "kept.txt", "user.casfs.digest") == digest
            with pytest.raises(OSError):
                os.getxattr(uploads / "kept.txt", "user.casfs.uri")
            assert "its saved asset name is dropped" in mount.log_text()


def _fetched(endpoint: str, uri: str) -> FetchedAsset | None:
    try:
        return fetch(endpoint, [uri])
    except CasError:
        return None
