"""``<instance>/trees/`` through a real mount and real tools: trees made by ``casfs put -r``
and by ``cp -r`` into uploads/ read back with ``diff -r --no-dereference``, and every kind
of bad Directory (written straight into the server's store, a Directory being a blob)
answered with its errno, never a crash."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_observability import Scrape, metrics_url
from tests.test_trees_cli import executables, make_tree, put_r
from tests.test_trees_server import store_raw

MAX_DEPTH = 6
MAX_ENTRIES = 50


@dataclass
class Fixture:
    root: Path
    server: CasfsServer
    mount: CasfsMount

    @property
    def trees(self) -> Path:
        return self.mount.mountpoint / "main" / "trees"

    def tree(self, digest: Digest | str) -> Path:
        hash_, size = str(digest).split("/")
        return self.trees / hash_ / size

    def calls(self) -> dict[str, float]:
        """The server's calls so far that read blobs, by method."""
        scrape = Scrape.of(metrics_url(self.server.log.read_text()))
        methods = ("BatchReadBlobs", "Read")
        return {m: scrape.value("casfs_grpc_server_handled_total", grpc_method=m) for m in methods}

    def upload(self, *blobs: bytes) -> list[Digest]:
        async def main() -> list[Digest]:
            async with CasClient(remote(self.server.endpoint)) as client:
                return [await client.upload_bytes(blob) for blob in blobs]

        return trio.run(main)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("trees")
    with (
        CasfsServer(root / "store", "--metrics", "127.0.0.1:0") as server,
        CasfsMount(
            root / "mnt",
            "--remote",
            server.endpoint,
            "--tree-max-depth",
            str(MAX_DEPTH),
            "--tree-max-entries",
            str(MAX_ENTRIES),
            "--no-disk-cache",
        ) as mount,
    ):
        yield Fixture(root, server, mount)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=300, check=check)


def xattr(path: Path) -> str:
    return os.getxattr(path, "user.casfs.digest", follow_symlinks=False).decode()


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as error:
        return error.errno or 0
    raise AssertionError(f"{fn} did not fail")


def test_a_tree_put_r_made_reads_back(fx: Fixture) -> None:
    source = make_tree(fx.root / "put-source")
    digest = put_r(fx.server, source)
    tree = fx.tree(digest)
    sh("diff", "-r", "--no-dereference", str(source), str(tree))
    assert executables(tree) == {"run.sh"}
    assert (tree / "run.sh").stat().st_mode & 0o777 == 0o555
    assert (tree / "zero").stat().st_mode & 0o777 == 0o444
    assert os.readlink(tree / "link-abs") == "/etc/hostname"
    assert list((tree / "empty" / "nested-empty").iterdir()) == []
    assert xattr(tree) == digest
    data = (source / "src" / "lib" / "data.bin").read_bytes()
    assert xattr(tree / "src" / "lib" / "data.bin") == str(Digest.of_bytes(data))
    assert digest.split("/")[0] in os.listdir(fx.trees)  # ls trees/ shows what was seen
    assert os.listdir(fx.trees / digest.split("/")[0]) == [digest.split("/")[1]]
    # what ls -l asks of every name: no attribute outside user.*, and no error for it
    assert errno_of(os.getxattr, tree / "run.sh", "security.selinux") == errno.ENODATA
    assert errno_of(os.getxattr, tree, "system.posix_acl_access") == errno.ENODATA
    assert b"run.sh" in sh("ls", "-lR", str(tree)).stdout
    # real tools over the whole tree, twice (the second time from the caches: the opens
    # that find a small file's pages stored already must still give its bytes)
    for _ in range(2):
        tar = sh("tar", "cf", "-", "-C", str(tree), ".").stdout
        assert len(tar) > 6 << 20
        assert b"leaf\n" in sh("grep", "-r", "leaf", str(tree)).stdout
        sh("diff", "-r", "--no-dereference", str(source), str(tree))


def test_a_tree_cp_r_made_in_uploads_reads_back(fx: Fixture) -> None:
    source = make_tree(fx.root / "cp-source")
    (source / "more").mkdir()
    for i in range(40):  # a directory of small files: fetched in batches
        (source / "more" / f"f{i:02}").write_bytes(os.urandom(i * 100 + 1))
    uploads = fx.mount.mountpoint / "main" / "uploads"
    sh("cp", "-r", str(source), str(uploads / "cp-tree"))
    digest = xattr(uploads / "cp-tree")
    assert digest.split("/")[0] in os.listdir(fx.trees)
    tree = fx.tree(digest)
    before = fx.calls()
    sums = sh("sh", "-c", f"cd {tree}/more && sha256sum *").stdout
    assert sums == sh("sh", "-c", f"cd {source}/more && sha256sum *").stdout
    after = fx.calls()
    # The Directories (a call per level of the tree) and the 40 small files in a batch,
    # not a call per file (46 calls without the batch).
    assert after["BatchReadBlobs"] - before["BatchReadBlobs"] <= 10, (before, after)
    assert after["Read"] == before["Read"]
    sh("diff", "-r", "--no-dereference", str(source), str(tree))
    assert executables(tree) == {"run.sh"}


def directory(
    files: dict[str, Digest] | None = None,
    dirs: dict[str, Digest] | None = None,
    links: dict[str, str] | None = None,
) -> re_pb2.Directory:
    message = re_pb2.Directory()
    for name, digest in sorted((files or {}).items()):
        message.files.add(name=name, digest=digest.to_proto())
    for name, digest in sorted((dirs or {}).items()):
        message.directories.add(name=name, digest=digest.to_proto())
    for name, target in sorted((links or {}).items()):
        message.symlinks.add(name=name, target=target)
    return message


def test_bad_directories_are_eio_for_that_directory(fx: Fixture) -> None:
    (good,) = fx.upload(b"good\n")
    hostile: dict[str, bytes] = {}
    for label, name in [("empty", ""), ("dot", "."), ("dotdot", ".."), ("slash", "a/b")]:
        hostile[label] = directory({name: good}).SerializeToString()
    hostile["nul"] = directory({"a\0b": good}).SerializeToString()
    hostile["twice"] = directory({"x": good}, {"x": Digest.of_bytes(b"")}).SerializeToString()
    hostile["garbage"] = b"\xff\xff\xff\xff not a Directory"
    hostile["toomany"] = directory(
        {f"f{i:03}": good for i in range(MAX_ENTRIES + 1)}
    ).SerializeToString()
    digests = dict(zip(hostile, fx.upload(*hostile.values()), strict=True))
    # bytes that do not match their digest: another Directory of the same length
    honest = directory({"a": good}).SerializeToString()
    liar = directory({"b": good}).SerializeToString()
    digests["liar"] = Digest.of_bytes(honest)
    store_raw(fx.server, digests["liar"], liar)
    digests["missing"] = Digest.of_bytes(directory({"never": good}).SerializeToString())
    (missing_file,) = [Digest.of_bytes(b"never stored either\n")]
    (root,) = fx.upload(
        directory({"good": good, "nofile": missing_file}, digests).SerializeToString()
    )
    tree = fx.tree(root)
    assert sorted(os.listdir(tree)) == sorted([*digests, "good", "nofile"])
    assert (tree / "good").read_bytes() == b"good\n"
    assert errno_of((tree / "nofile").read_bytes) == errno.EIO  # promised, not there
    assert errno_of(os.listdir, tree / "missing") == errno.ENOENT
    for label in hostile.keys() | {"liar"}:
        for _ in range(2):
            assert errno_of(os.listdir, tree / label) == errno.EIO, label
    log = fx.mount.log_text()
    assert log.count(str(digests["liar"])) == 1  # logged once
    assert "Traceback" not in log
    assert sorted(os.listdir(tree)) == sorted([*digests, "good", "nofile"])  # still fine
    missing_tree = Digest.of_bytes(b"no such tree")
    assert errno_of(os.listdir, fx.tree(missing_tree)) == errno.ENOENT


def test_a_tree_deeper_than_the_limit_is_eio_below_it(fx: Fixture) -> None:
    (leaf,) = fx.upload(b"deep\n")
    below = directory({"leaf": leaf})
    for _ in range(MAX_DEPTH + 1):
        (digest,) = fx.upload(below.SerializeToString())
        below = directory(dirs={"d": digest})
    (root,) = fx.upload(below.SerializeToString())
    path = fx.tree(root)
    for _ in range(MAX_DEPTH):
        path = path / "d"
        assert os.listdir(path) == ["d"]
    assert errno_of(os.listdir, path / "d") == errno.EIO
    found = sh("find", str(fx.tree(root)), check=False)
    assert found.returncode != 0 and b"Input/output error" in found.stderr


def test_mtimes_come_from_node_properties(fx: Fixture) -> None:
    (data,) = fx.upload(b"dated\n")
    message = directory(links={"link": "file"})
    node = message.files.add(name="file", digest=data.to_proto(), is_executable=True)
    node.node_properties.mtime.FromNanoseconds(1_600_000_000_123_456_789)
    message.symlinks[0].node_properties.mtime.FromNanoseconds(1_500_000_000 * 10**9)
    message.node_properties.mtime.FromNanoseconds(1_400_000_000 * 10**9)
    (root,) = fx.upload(message.SerializeToString())
    tree = fx.tree(root)
    assert (tree / "file").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (tree / "file").stat().st_mode & 0o777 == 0o555
    assert os.lstat(tree / "link").st_mtime_ns == 1_500_000_000 * 10**9
    assert tree.stat().st_mtime_ns == 1_400_000_000 * 10**9
    assert xattr(tree / "file") == str(data)
