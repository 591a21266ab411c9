"""``casfs put -r`` and ``casfs get -r`` as a user runs them against a real ``casfs serve``:
round trips compared with ``diff -r --no-dereference``, the digest ``cp -r`` into a mount's
uploads/ gives, and trees that try to write outside the destination."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_cli import casfs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasfsServer]:
    """One server for the module (a start costs seconds): every test here stores content of
    its own or content-addressed twins of it, and none asserts what else the store holds."""
    with CasfsServer(tmp_path_factory.mktemp("trees-cli") / "store") as running:
        yield running


def make_tree(root: Path) -> Path:
    """Files small and large, repeated content, executables, symlinks (relative, absolute,
    dangling, to a directory), empty files and empty directories, names with spaces and
    non-ASCII letters."""
    (root / "src" / "lib" / "deep" / "er").mkdir(parents=True)
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "lib" / "data.bin").write_bytes(os.urandom(3 << 20))
    (root / "src" / "lib" / "copy.bin").write_bytes(
        (root / "src" / "lib" / "data.bin").read_bytes()
    )
    (root / "src" / "lib" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (root / "src" / "lib" / "deep" / "small.bin").write_bytes(os.urandom(65_536))
    (root / "a file with spaces é.txt").write_text("spaces\n")
    (root / "zero").write_bytes(b"")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "link-rel").symlink_to("src/main.c")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("../../nowhere")
    (root / "link-dir").symlink_to("src/lib")
    return root


def executables(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.is_symlink() and p.is_file() and p.stat().st_mode & 0o111
    }


def put_r(server: CasfsServer, path: Path) -> str:
    put = casfs("put", "-r", "--remote", server.endpoint, str(path))
    assert put.returncode == 0, put.stderr
    return put.stdout.decode().strip()


def test_put_r_then_get_r_gives_the_same_tree(server: CasfsServer, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    digest = put_r(server, source)
    assert put_r(server, source) == digest  # a second upload: same digest, nothing new
    out = tmp_path / "out"
    got = casfs("get", "-r", "--remote", server.endpoint, digest, str(out))
    assert got.returncode == 0, got.stderr
    subprocess.run(["diff", "-r", "--no-dereference", str(source), str(out)], check=True)
    assert executables(out) == executables(source) == {"run.sh"}
    assert os.readlink(out / "link-abs") == "/etc/hostname"
    assert (out / "empty" / "nested-empty").is_dir()
    assert not list(tmp_path.glob(".out.*"))  # no work directory left behind
    # an existing empty directory is filled; a non-empty one is refused, untouched
    (tmp_path / "empty-dest").mkdir()
    got = casfs("get", "-r", "--remote", server.endpoint, digest, str(tmp_path / "empty-dest"))
    assert got.returncode == 0, got.stderr
    again = casfs("get", "-r", "--remote", server.endpoint, digest, str(out))
    assert again.returncode == 1 and b"exists" in again.stderr
    subprocess.run(["diff", "-r", "--no-dereference", str(source), str(out)], check=True)


def test_get_r_needs_a_destination(server: CasfsServer) -> None:
    got = casfs("get", "-r", "--remote", server.endpoint, str(Digest.of_bytes(b"")))
    assert got.returncode == 2 and b"OUTPUT" in got.stderr


def test_put_r_refuses_special_files(server: CasfsServer, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    os.mkfifo(tmp_path / "tree" / "fifo")
    put = casfs("put", "-r", "--remote", server.endpoint, str(tmp_path / "tree"))
    assert put.returncode == 1 and b"not a file, directory or symlink" in put.stderr


def test_put_r_gives_the_digest_cp_r_into_uploads_gives(
    server: CasfsServer, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "tree")
    with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint) as mount:
        uploads = mount.mountpoint / "main" / "uploads"
        subprocess.run(["cp", "-r", str(source), str(uploads)], check=True, timeout=300)
        shown = subprocess.run(
            ["getfattr", "--only-values", "-n", "user.casfs.digest", str(uploads / "tree")],
            capture_output=True,
            check=True,
            timeout=300,
        ).stdout.decode()
    assert put_r(server, source) == shown


def upload(server: CasfsServer, *messages: re_pb2.Directory) -> list[Digest]:
    async def main() -> list[Digest]:
        async with CasClient(remote(server.endpoint)) as client:
            await client.upload_bytes(b"owned\n")
            return [await client.upload_bytes(m.SerializeToString()) for m in messages]

    return trio.run(main)


@pytest.mark.parametrize("kind", ["dotdot", "symlink-then-file", "slash"])
def test_get_r_refuses_a_tree_that_escapes(server: CasfsServer, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = Digest.of_bytes(b"owned\n").to_proto()
    inner = re_pb2.Directory()
    inner.files.add(name="owned", digest=payload)
    (inner_digest,) = upload(server, inner)
    root = re_pb2.Directory()
    if kind == "dotdot":
        root.directories.add(name="..", digest=inner_digest.to_proto())
    elif kind == "slash":
        root.files.add(name="../outside/owned", digest=payload)
    else:  # a symlink to outside/, and a file of the same name to be written through it
        root.files.add(name="link", digest=payload)
        root.symlinks.add(name="link", target=str(outside / "owned"))
    (root_digest,) = upload(server, root)
    dest = tmp_path / "work" / "dest"
    dest.parent.mkdir()
    got = casfs("get", "-r", "--remote", server.endpoint, str(root_digest), str(dest))
    assert got.returncode == 1, got.stderr
    assert b"entry is named" in got.stderr or b"two entries" in got.stderr
    assert list(outside.iterdir()) == []
    assert list(dest.parent.iterdir()) == []  # nothing left, not even the work directory


def test_get_r_writes_symlinks_as_symlinks(server: CasfsServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = re_pb2.Directory()
    root.files.add(name="b", digest=Digest.of_bytes(b"owned\n").to_proto())
    root.symlinks.add(name="a", target=str(outside))
    (digest,) = upload(server, root)
    dest = tmp_path / "dest"
    got = casfs("get", "-r", "--remote", server.endpoint, str(digest), str(dest))
    assert got.returncode == 0, got.stderr
    assert stat.S_ISLNK(os.lstat(dest / "a").st_mode)
    assert os.readlink(dest / "a") == str(outside)
    assert list(outside.iterdir()) == []
