"""``trees/blake3/<hash>/`` on a real mount of a tvix castore: a tree put through tvix's
DirectoryService (and its files through BlobService Put) read back with real tools against
``casfs serve``'s tvix endpoint; bad Directories planted in its store, and hostile ones
from a bent DirectoryService (``tests/tvixbent.py``) for what ``casfs serve`` refuses to
send; and the limits."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import trio

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs.cas.tvix import TvixClient
from casfs.digest import Digest
from casfs.trees.encode import DirectoryEntry, Entry, FileEntry, SymlinkEntry
from casfs.trees.tvixencode import digest_of, directory_message
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_client_server import write_file
from tests.tvixbent import BentDirectories, BentTvix, serve

MIB = 1 << 20


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=120, check=check)


async def put_tree(tvix: TvixClient, top: Path) -> Digest:
    """Put the files below ``top`` by BlobService Put and its directories by one
    DirectoryService Put (leaves first, each once); returns the root's digest."""
    directories: dict[bytes, castore_pb2.Directory] = {}

    async def walk(path: Path) -> Digest:
        entries: list[tuple[str, Entry]] = []
        for child in sorted(path.iterdir()):
            if child.is_symlink():
                entries.append((child.name, SymlinkEntry(os.readlink(child))))
            elif child.is_dir():
                entries.append((child.name, DirectoryEntry(await walk(child))))
            else:
                executable = bool(child.stat().st_mode & 0o111)
                entries.append((child.name, FileEntry(await tvix.put(child), executable)))
        message = directory_message(entries)
        directories.setdefault(tvix_directory.digest_of(message), message)
        return digest_of(message)

    root = await walk(top)
    await tvix.put_directories(list(directories.values()))
    return root


def run_tvix(endpoint: str, fn: object) -> object:
    async def main() -> object:
        async with TvixClient(remote(endpoint)) as tvix:
            return await fn(tvix)  # type: ignore[operator]

    return trio.run(main)


def make_source(top: Path) -> Path:
    """Files small, empty and large, executable and not, symlinks (one dangling), empty
    directories, and one directory twice (one Directory at two paths)."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "sub" / "deeper" / "also-empty").mkdir()
    write_file(top / "big.bin", 3 * MIB + 5)
    write_file(top / "sub" / "small", 1000)
    (top / "sub" / "deeper" / "none").write_bytes(b"")
    tool = top / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (top / "link").symlink_to("sub/small")
    (top / "dangling").symlink_to("../nowhere")
    sh("cp", "-a", str(top / "sub"), str(top / "twin"))
    return top


def plant(store: Path, raw: bytes, data: bytes) -> None:
    """Put ``data`` into the store's file for blake3 ``raw``, whatever its hash."""
    path = store / "cas" / "blake3" / raw.hex()[:2] / raw.hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def raw_of(directory: castore_pb2.Directory) -> bytes:
    return blake3.blake3(directory.SerializeToString(deterministic=True)).digest()


def errno_of(path: Path) -> int:
    try:
        os.listdir(path)
    except OSError as error:
        return error.errno or 0
    return 0


# -- casfs serve's tvix endpoint -----------------------------------------------------------


@dataclass
class Served:
    root: Path
    server: CasfsServer
    mount: CasfsMount
    source: Path
    digest: Digest

    @property
    def trees(self) -> Path:
        return self.mount.mountpoint / "main" / "trees" / "blake3"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tvixtrees")
    with CasfsServer(root / "store") as server:
        endpoint = f"grpc+http://127.0.0.1:{server.port}"
        source = make_source(root / "src")
        digest = run_tvix(endpoint, lambda tvix: put_tree(tvix, source))
        assert isinstance(digest, Digest)
        args = ("--remote", endpoint, "--retries", "1", "--no-disk-cache")
        with CasfsMount(root / "mnt", *args) as mount:
            yield Served(root, server, mount, source, digest)


def test_a_tree_reads_back_as_put(served: Served) -> None:
    assert sorted(os.listdir(served.mount.mountpoint / "main")) == ["blobs", "trees", "uploads"]
    tree = served.trees / served.digest.hash
    out = sh("diff", "-r", "--no-dereference", str(served.source), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert stat.S_IMODE((tree / "tool.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((tree / "big.bin").stat().st_mode) == 0o444
    assert os.readlink(tree / "dangling") == "../nowhere"
    assert (
        sh("tail", "-c", "100", str(tree / "big.bin")).stdout
        == ((served.source / "big.bin").read_bytes()[-100:])
    )
    assert os.listdir(served.trees) == [served.digest.hash]  # what this mount has seen


def test_attributes_name_the_digests(served: Served) -> None:
    tree = served.trees / served.digest.hash
    assert os.getxattr(tree, "user.casfs.digest").decode() == served.digest.hash
    assert os.getxattr(tree, "user.casfs.digest_function") == b"blake3"
    assert int(os.getxattr(tree, "user.casfs.tvix_size")) == served.digest.size
    sub, twin = tree / "sub", tree / "twin"
    assert os.getxattr(sub, "user.casfs.digest") == os.getxattr(twin, "user.casfs.digest")
    digest = blake3.blake3((served.source / "sub" / "small").read_bytes()).hexdigest()
    assert os.getxattr(sub / "small", "user.casfs.digest").decode() == f"{digest}/1000"
    assert (served.trees / os.getxattr(sub, "user.casfs.digest").decode() / "small").exists()


def test_missing_directories_are_enoent_and_missing_files_eio(served: Served) -> None:
    assert errno_of(served.trees / ("00" * 32)) == errno.ENOENT
    assert errno_of(served.trees / "not-a-hash") == errno.ENOENT
    absent = bytes(range(32))
    lost = write_file(served.root / "lost", 5000)
    file_node = castore_pb2.FileNode(
        name=b"lost", digest=blake3.blake3(lost.read_bytes()).digest(), size=5000
    )
    parent = castore_pb2.Directory(
        directories=[castore_pb2.DirectoryNode(name=b"gone", digest=absent, size=0)],
        files=[file_node],
    )
    raw = raw_of(parent)
    plant(served.server.store, raw, parent.SerializeToString(deterministic=True))
    tree = served.trees / raw.hex()
    assert sorted(os.listdir(tree)) == ["gone", "lost"]
    assert errno_of(tree / "gone") == errno.ENOENT
    with pytest.raises(OSError) as caught:
        (tree / "lost").read_bytes()
    assert caught.value.errno == errno.EIO


def test_bad_directories_in_the_store_are_eio(served: Served) -> None:
    good = castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"a", target=b"b")])
    other = castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"a", target=b"c")])
    mismatch = raw_of(other)  # the bytes of ``good`` under ``other``'s hash
    plant(served.server.store, mismatch, good.SerializeToString(deterministic=True))
    garbage = blake3.blake3(b"\xff\xff\xff garbage").digest()
    plant(served.server.store, garbage, b"\xff\xff\xff garbage")
    dotdot = castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"..", target=b"x")])
    plant(served.server.store, raw_of(dotdot), dotdot.SerializeToString(deterministic=True))
    for _ in range(2):
        for raw in (mismatch, garbage, raw_of(dotdot)):
            assert errno_of(served.trees / raw.hex()) == errno.EIO, raw.hex()
    assert served.mount.log_text().count(mismatch.hex()) == 1  # logged once


# -- a bent DirectoryService -----------------------------------------------------------------


@dataclass
class Bent:
    root: Path
    directories: BentDirectories
    mount: CasfsMount

    def tree(self, raw: bytes) -> Path:
        return self.mount.mountpoint / "main" / "trees" / "blake3" / raw.hex()


MAX_ENTRIES = 20
MAX_DEPTH = 60  # above the chain of test_a_deep_upload_is_one_put_of_its_closure


@pytest.fixture(scope="module")
def bent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bent]:
    root = tmp_path_factory.mktemp("tvixtrees-bent")
    directories = BentDirectories()
    server, port = serve(BentTvix(), directories)
    try:
        args = ("--remote", f"tvix+grpc://127.0.0.1:{port}", "--retries", "1", "--no-disk-cache")
        limits = ("--tree-max-entries", str(MAX_ENTRIES), "--tree-max-depth", str(MAX_DEPTH))
        with CasfsMount(root / "mnt", "-v", *args, *limits) as mount:  # -v: the prefetch's end
            yield Bent(root, directories, mount)
    finally:
        server.stop(None)


def _link(name: bytes) -> castore_pb2.SymlinkNode:
    return castore_pb2.SymlinkNode(name=name, target=b"t")


HOSTILE = {
    "empty name": castore_pb2.Directory(symlinks=[_link(b"")]),
    "dot": castore_pb2.Directory(symlinks=[_link(b".")]),
    "dotdot": castore_pb2.Directory(symlinks=[_link(b"..")]),
    "slash": castore_pb2.Directory(symlinks=[_link(b"a/b")]),
    "nul": castore_pb2.Directory(symlinks=[_link(b"a\0b")]),
    "duplicate": castore_pb2.Directory(symlinks=[_link(b"a"), _link(b"a")]),
    "duplicate across lists": castore_pb2.Directory(
        files=[castore_pb2.FileNode(name=b"a", digest=bytes(32), size=1)], symlinks=[_link(b"a")]
    ),
    "out of order": castore_pb2.Directory(symlinks=[_link(b"b"), _link(b"a")]),
    "short digest": castore_pb2.Directory(
        files=[castore_pb2.FileNode(name=b"f", digest=bytes(31), size=1)]
    ),
    "not utf-8": castore_pb2.Directory(symlinks=[_link(b"\xff")]),
    "too many entries": castore_pb2.Directory(
        symlinks=[_link(b"%03d" % n) for n in range(MAX_ENTRIES + 1)]
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_directories_are_eio(bent: Bent, case: str) -> None:
    raw = bent.directories.add(HOSTILE[case])
    assert errno_of(bent.tree(raw)) == errno.EIO
    assert raw.hex() in bent.mount.log_text()  # why, in the log
    good = castore_pb2.Directory(
        directories=[castore_pb2.DirectoryNode(name=b"bad", digest=raw, size=1)]
    )
    parent = bent.tree(bent.directories.add(good))
    assert os.listdir(parent) == ["bad"]
    assert errno_of(parent / "bad") == errno.EIO


def test_a_walk_is_fetched_ahead_by_one_recursive_get(bent: Bent) -> None:
    leaf = bent.directories.add(castore_pb2.Directory(symlinks=[_link(b"l")]))
    middle = bent.directories.add(
        castore_pb2.Directory(
            directories=[castore_pb2.DirectoryNode(name=b"leaf", digest=leaf, size=1)]
        )
    )
    root = castore_pb2.Directory(
        directories=[
            castore_pb2.DirectoryNode(name=b"a", digest=middle, size=2),
            castore_pb2.DirectoryNode(name=b"b", digest=leaf, size=1),
        ]
    )
    raw = bent.directories.add(root)
    os.stat(bent.tree(raw))  # the root by one Get, then the subtree ahead
    bent.mount.wait_for_log(f"prefetched 3 directories of {raw.hex()}/5")  # all in the cache
    assert bent.directories.gets_of(raw) == [False, True]
    found = sh("find", str(bent.tree(raw))).stdout.decode().split()
    assert len(found) == 6  # root, a, a/leaf, a/leaf/l, b, b/l
    assert bent.directories.gets_of(middle) == [] and bent.directories.gets_of(leaf) == []


def test_a_directory_under_another_digest_is_eio(bent: Bent) -> None:
    liar = bent.directories.add(castore_pb2.Directory(symlinks=[_link(b"x")]), bytes([7]) * 32)
    assert errno_of(bent.tree(liar)) == errno.EIO


def test_a_miscounted_size_is_eio(bent: Bent) -> None:
    child = bent.directories.add(castore_pb2.Directory(symlinks=[_link(b"x")]))
    parent = castore_pb2.Directory(
        directories=[castore_pb2.DirectoryNode(name=b"c", digest=child, size=5)]
    )
    tree = bent.tree(bent.directories.add(parent))
    assert os.listdir(tree) == ["c"]
    assert errno_of(tree / "c") == errno.EIO


def test_depth_is_bounded(bent: Bent) -> None:
    raw = bent.directories.add(castore_pb2.Directory())
    for below in range(MAX_DEPTH + 1):  # entries below the child: one per level
        node = castore_pb2.DirectoryNode(name=b"d", digest=raw, size=below)
        raw = bent.directories.add(castore_pb2.Directory(directories=[node]))
    path = bent.tree(raw)
    for _ in range(MAX_DEPTH):
        path = path / "d"
        assert os.listdir(path) == ["d"]
    assert errno_of(path / "d") == errno.EIO


def test_cp_r_into_uploads_gives_the_tvix_directory_digest(served: Served) -> None:
    target = served.mount.mountpoint / "main" / "uploads" / "copied"
    sh("cp", "-r", str(served.source), str(target))
    assert os.getxattr(target, "user.casfs.digest").decode() == served.digest.hash
    assert int(os.getxattr(target, "user.casfs.tvix_size")) == served.digest.size
    names = sh("getfattr", "-d", "-m", "user.casfs", str(target / "sub")).stdout.decode()
    assert "user.casfs.tvix_size" in names and "resource_name" not in names
    # A tree of its own, put by the mount and read back through trees/blake3/.
    (target / "sub" / "new").write_bytes(b"new file\n")
    hash_ = os.getxattr(target / "sub", "user.casfs.digest").decode()
    tree = served.trees / hash_
    out = sh("diff", "-r", "--no-dereference", str(target / "sub"), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert hash_ in os.listdir(served.trees)


def test_uploads_put_each_directory_with_those_below_it(bent: Bent) -> None:
    """Upstream tvix takes a Directory only with everything below it in the same Put."""
    source = bent.root / "up"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "f").write_bytes(b"deep\n")
    (source / "a" / "g").write_bytes(b"g\n")
    (source / "e").mkdir()
    target = bent.mount.mountpoint / "main" / "uploads" / "up"
    sh("cp", "-r", str(source), str(target))
    puts = len(bent.directories.puts)
    hash_ = os.getxattr(target, "user.casfs.digest").decode()
    assert bent.directories.puts[puts:] == [4]  # up with all below it, leaves first
    tree = bent.tree(bytes.fromhex(hash_))
    out = sh("diff", "-r", "--no-dereference", str(source), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_a_deep_upload_is_one_put_of_its_closure(bent: Bent) -> None:
    """A chain of 50 directories is one Put of 51 Directories (the chain and one empty
    Directory at two names), not each subtree again below every parent (~1,300)."""
    source = bent.root / "chain"
    deepest = source.joinpath(*["d"] * 49)
    (deepest / "x").mkdir(parents=True)
    (deepest / "y").mkdir()
    (deepest / "f").write_bytes(b"at the bottom\n")
    target = bent.mount.mountpoint / "main" / "uploads" / "chain"
    sh("cp", "-r", str(source), str(target))
    puts, received = len(bent.directories.puts), bent.directories.received
    hash_ = os.getxattr(target, "user.casfs.digest").decode()
    assert bent.directories.puts[puts:] == [51]
    assert bent.directories.received - received == 51
    # Asked again below: known, nothing sent; after a change at the bottom: one Put again.
    assert os.getxattr(target / "d", "user.casfs.digest")
    assert bent.directories.received - received == 51
    target.joinpath(*["d"] * 49, "g").write_bytes(b"new\n")
    assert os.getxattr(target, "user.casfs.digest").decode() != hash_
    assert bent.directories.puts[puts:] == [51, 51]
    tree = bent.tree(bytes.fromhex(hash_))
    out = sh("diff", "-r", "--no-dereference", str(source), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_a_put_answered_with_another_digest_is_eio(bent: Bent) -> None:
    target = bent.mount.mountpoint / "main" / "uploads" / "lied"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "f").write_bytes(b"lied about\n")
    bent.directories.put_mode = "lie"
    try:
        with pytest.raises(OSError) as raised:
            os.getxattr(target, "user.casfs.digest")
    finally:
        bent.directories.put_mode = "ok"
    assert raised.value.errno == errno.EIO
    assert "the server answered" in bent.mount.log_text()
    hash_ = os.getxattr(target, "user.casfs.digest").decode()  # nothing kept: asked again
    assert os.listdir(bent.tree(bytes.fromhex(hash_))) == ["sub"]


def test_a_target_that_is_not_utf8_reads_back_as_its_bytes(bent: Bent) -> None:
    source = bent.root / "bytes"
    source.mkdir()
    os.symlink(b"../\xffname", os.fsencode(source / "link"))
    target = bent.mount.mountpoint / "main" / "uploads" / "bytes"
    sh("cp", "-r", str(source), str(target))
    hash_ = os.getxattr(target, "user.casfs.digest").decode()
    tree = bent.tree(bytes.fromhex(hash_))
    assert os.readlink(os.fsencode(tree / "link")) == b"../\xffname"
    assert os.lstat(tree / "link").st_size == len(b"../\xffname")
    out = sh("diff", "-r", "--no-dereference", str(source), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_a_get_that_sends_nothing_is_eio(bent: Bent) -> None:
    raw = bent.directories.add(castore_pb2.Directory(symlinks=[_link(b"quiet")]))
    bent.directories.silent.add(raw)
    assert errno_of(bent.tree(raw)) == errno.EIO
    bent.mount.wait_for_log(f"tvix Directory Get {raw.hex()}: the server sent nothing")


def test_a_directory_whose_entries_change_gets_a_new_digest(bent: Bent) -> None:
    """Asked below first: a directory's own digest, not only those above, goes stale when a
    symlink or directory in it is removed, added or moved out."""
    target = bent.mount.mountpoint / "main" / "uploads" / "changing"
    (target / "a").mkdir(parents=True)
    (target / "b").mkdir()
    (target / "a" / "link").symlink_to("somewhere")
    (target / "a" / "gone").mkdir()
    source = bent.root / "changing"
    for change in (
        lambda: (target / "a" / "link").unlink(),
        lambda: (target / "a" / "gone").rmdir(),
        lambda: (target / "a" / "moved").mkdir(),
        lambda: (target / "a" / "moved").rename(target / "b" / "moved"),
    ):
        before = {p: os.getxattr(target / p, "user.casfs.digest") for p in ("a", "b", "")}
        change()
        after = {p: os.getxattr(target / p, "user.casfs.digest") for p in ("a", "b", "")}
        assert after[""] != before[""] and after["a"] != before["a"], change
    sh("cp", "-r", str(target), str(source))
    tree = bent.tree(bytes.fromhex(os.getxattr(target, "user.casfs.digest").decode()))
    out = sh("diff", "-r", "--no-dereference", str(source), str(tree), check=False)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
