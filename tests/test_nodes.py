"""The mount's nodes, namespace and inode table alone: no mount, and no server but where a
node asks one (then a real ``casfs serve``). The kernel's notifications are recorded by a
``Kernel`` that keeps what it is told: the one seam the nodes have towards the kernel."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from casfs.cas.client import CasClient
from casfs.digest import Digest, DigestFunction
from casfs.fs.assetcatalog import MountAssets
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.inodes import ROOT_INODE, InodeTable
from casfs.fs.namespace import Namespace
from casfs.fs.nodes import (
    ROOT,
    BlobFile,
    BlobsDir,
    Caller,
    FunctionDir,
    HashDir,
    InstanceDir,
    MountState,
    Node,
    NodeError,
    SetAttributes,
    UploadDir,
    UploadFile,
    UploadsDir,
    UploadSymlink,
)
from casfs.fs.nodes.uploadtree import RENAME_NOREPLACE
from casfs.fs.uploads import Spool, Uploads
from tests.conftest import remote
from tests.servers import CasfsServer

OWNER = Caller(os.getuid(), os.getgid())
STRANGER = Caller(OWNER.uid + 1000, OWNER.gid + 1000)
HASH = "a" * 64
NOWHERE = "grpc://127.0.0.1:9"  # a client that is never called: its channel connects lazily


class Kernel:
    """Records what the nodes tell the kernel."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, int, bytes]] = []
        self.invalidated: list[int] = []

    def notify_store(self, inode: int, offset: int, data: bytes) -> None:
        self.stored.append((inode, offset, data))

    def invalidate_inode(self, inode: int) -> None:
        self.invalidated.append(inode)


Scenario = Callable[[MountState], Awaitable[None]]


def run(
    tmp_path: Path,
    scenario: Scenario,
    *,
    endpoint: str = NOWHERE,
    instances: tuple[str, ...] = ("main",),
    read_only: bool = False,
) -> None:
    """Run ``scenario`` against the nodes of a mount of ``instances`` (never mounted)."""

    async def main() -> None:
        clients = {name: CasClient(remote(endpoint, name)) for name in instances}
        spool = Spool(tmp_path / "cache")
        try:
            async with trio.open_nursery() as nursery:
                cache = BlockCache(nursery, block_size=1 << 20, capacity=16 << 20)
                uploads = Uploads(clients, spool, nursery)
                state = MountState(
                    clients=clients,
                    namespace=Namespace(instances, [DigestFunction.BLAKE3]),
                    cache=cache,
                    uploads=uploads,
                    kernel=Kernel(),
                    status=lambda: b"{}",
                    read_only=read_only,
                    uid=OWNER.uid,
                    gid=OWNER.gid,
                )
                await scenario(state)
                nursery.cancel_scope.cancel()
        finally:
            spool.close()
            for client in clients.values():
                await client.aclose()

    trio.run(main)


def refusal(errno_: int) -> pytest.RaisesExc[NodeError]:
    return pytest.raises(NodeError, check=lambda error: error.errno == errno_)


def names(entries: list[tuple[str, Node]]) -> list[str]:
    return [name for name, _ in entries]


# -- the namespace and the inode table ----------------------------------------------------


def test_namespace_rules() -> None:
    names_ = Namespace(["main", "a/b", "a/c"], [DigestFunction.BLAKE3])
    assert names_.subdirectories("") == ["a", "main"]
    assert names_.subdirectories("a") == ["b", "c"]
    assert names_.is_instance("a/b") and not names_.is_instance("a")
    assert names_.named_functions() == [DigestFunction.BLAKE3]
    assert names_.hash_function(HASH, None) is DigestFunction.SHA256
    assert names_.hash_function("a" * 40, None) is None  # sha1 is not in use
    assert names_.hash_function("g" * 64, None) is None
    assert names_.hash_function(HASH, DigestFunction.BLAKE3) is DigestFunction.BLAKE3
    assert names_.blob_digest(HASH, DigestFunction.SHA256, "12") == Digest(HASH, 12)
    for bad in ("012", "-1", "1e3", "", "١٢"):
        assert names_.blob_digest(HASH, DigestFunction.SHA256, bad) is None


def test_inode_table_counts_lookups_and_keeps_pinned_nodes() -> None:
    table = InodeTable(ROOT)
    assert table.node(ROOT_INODE) is ROOT
    pinned = table.inode(BlobsDir("main"), pin=True)
    blob = BlobFile("main", Digest(HASH, 3))
    inode = table.lookup(blob)
    assert table.lookup(BlobFile("main", Digest(HASH, 3))) == inode  # equal nodes, one inode
    table.forget(inode, 1)
    assert table.node(inode) == blob  # one lookup left
    table.forget(inode, 1)
    with pytest.raises(KeyError):
        table.node(inode)
    table.forget(pinned, 5)
    assert table.node(pinned) == BlobsDir("main")
    assert table.lookup(blob) not in (inode, pinned, ROOT_INODE)  # a new number: fine


# -- the read-only tree -------------------------------------------------------------------


def test_static_directories_list_and_look_up(tmp_path: Path) -> None:
    async def scenario(state: MountState) -> None:
        assert names(ROOT.entries(state, OWNER)) == ["a", "main"]
        nested = await ROOT.lookup(state, "a", OWNER)
        assert nested == InstanceDir("a")
        assert names(nested.entries(state, OWNER)) == ["b"]
        main = await ROOT.lookup(state, "main", OWNER)
        assert names(main.entries(state, OWNER)) == ["blobs", "uploads"]  # no asset API
        state.assets = MountAssets({"main": object()})  # type: ignore[dict-item]
        assert names(main.entries(state, OWNER)) == ["blobs", "uploads", "assets"]
        blobs = await main.lookup(state, "blobs", OWNER)
        assert blobs == BlobsDir("main")
        assert names(blobs.entries(state, OWNER)) == ["blake3"]
        assert await blobs.lookup(state, "blake3", OWNER) == FunctionDir(
            "main", DigestFunction.BLAKE3
        )
        assert await blobs.lookup(state, HASH, OWNER) == HashDir(
            "main", DigestFunction.SHA256, HASH
        )
        with refusal(errno.ENOENT):
            await blobs.lookup(state, "not-a-hash", OWNER)
        hash_dir = HashDir("main", DigestFunction.SHA256, HASH)
        with refusal(errno.ENOENT):  # malformed: no call to the server
            await hash_dir.lookup(state, "012", OWNER)
        assert stat.S_ISDIR(blobs.attributes(state).mode)
        assert ROOT.pinned and blobs.pinned and not hash_dir.pinned

    run(tmp_path, scenario, instances=("main", "a/b"))


def test_the_status_attribute_is_on_the_root_only(tmp_path: Path) -> None:
    async def scenario(state: MountState) -> None:
        assert await ROOT.listxattr(state) == [b"user.casfs.status"]
        assert await ROOT.getxattr(state, b"user.casfs.status", OWNER) == b"{}"
        with refusal(errno.ENODATA):
            await InstanceDir("main").getxattr(state, b"user.casfs.status", OWNER)

    run(tmp_path, scenario)


def test_seen_blobs_are_listed_to_whom_may_see_them(tmp_path: Path) -> None:
    async def scenario(state: MountState) -> None:
        digest = Digest(HASH, 5)
        state.catalog.found("main", digest)
        blobs, hash_dir = BlobsDir("main"), HashDir("main", DigestFunction.SHA256, HASH)
        assert names(blobs.entries(state, OWNER)) == ["blake3", HASH]
        assert names(hash_dir.entries(state, OWNER)) == ["5"]
        assert names(blobs.entries(state, STRANGER)) == ["blake3"]
        assert hash_dir.entries(state, STRANGER) == []
        assert names(FunctionDir("main", DigestFunction.BLAKE3).entries(state, OWNER)) == []
        blob = BlobFile("main", digest)
        assert blob.attributes(state).size == 5
        xattrs = await blob.xattrs(state)
        assert xattrs[b"user.casfs.digest"] == f"{HASH}/5".encode()

    run(tmp_path, scenario)


@pytest.mark.parametrize(("read_only", "code"), [(False, errno.EACCES), (True, errno.EROFS)])
def test_the_read_only_tree_refuses_changes(tmp_path: Path, read_only: bool, code: int) -> None:
    async def scenario(state: MountState) -> None:
        for node in (ROOT, BlobsDir("main"), HashDir("main", DigestFunction.SHA256, HASH)):
            with refusal(code):
                await node.mkdir(state, b"x", 0o755)
            with refusal(code):
                await node.unlink(state, b"x")
            with refusal(code):
                await node.rename(state, b"x", UploadsDir("main"), b"y", 0)
            with refusal(code):
                await node.setattr(state, SetAttributes(mode=0o644))
        with refusal(errno.EINVAL if not read_only else errno.EROFS):
            await HashDir("main", DigestFunction.SHA256, HASH).create(state, b"x", 0o644, 0)

    run(tmp_path, scenario, read_only=read_only)


# -- the upload tree ----------------------------------------------------------------------


def test_upload_tree_changes_follow_posix_rules(tmp_path: Path) -> None:
    async def scenario(state: MountState) -> None:
        uploads = UploadsDir("main")
        src = await uploads.mkdir(state, b"src", 0o755)
        assert isinstance(src, UploadDir)
        with refusal(errno.EEXIST):
            await uploads.mkdir(state, b"src", 0o755)
        link = await src.symlink(state, b"link", "../elsewhere")
        assert isinstance(link, UploadSymlink)
        assert link.readlink(state) == "../elsewhere"
        assert stat.S_ISLNK(link.attributes(state).mode)
        assert link.attributes(state).size == len("../elsewhere")
        with refusal(errno.ENOTDIR):
            await link.mkdir(state, b"x", 0o755)
        with refusal(errno.EINVAL):
            await uploads.mkdir(state, b"\xff", 0o755)  # REAPI names are UTF-8
        assert await uploads.lookup(state, "src", OWNER) == src
        assert names(src.entries(state, OWNER)) == ["link"]

        with refusal(errno.EINVAL):  # a directory into itself
            await uploads.rename(state, b"src", src, b"inner", 0)
        dst = await uploads.mkdir(state, b"dst", 0o755)
        await dst.mkdir(state, b"full", 0o755)
        await (await dst.lookup(state, "full", OWNER)).mkdir(state, b"x", 0o755)
        with refusal(errno.ENOTEMPTY):
            await uploads.rename(state, b"src", dst, b"full", 0)
        with refusal(errno.EEXIST):
            await uploads.rename(state, b"src", dst, b"full", RENAME_NOREPLACE)
        with refusal(errno.ENOTDIR):  # a directory over a symlink
            await dst.rename(state, b"full", src, b"link", 0)
        await uploads.rename(state, b"src", dst, b"moved", 0)
        assert names(uploads.entries(state, OWNER)) == ["dst"]
        assert names(dst.entries(state, OWNER)) == ["full", "moved"]
        assert await dst.lookup(state, "moved", OWNER) == src  # the same entry, moved

        with refusal(errno.ENOTEMPTY):
            await dst.rmdir(state, b"full")
        with refusal(errno.EISDIR):
            await dst.unlink(state, b"full")
        await src.unlink(state, b"link")
        with refusal(errno.ENOENT):
            link.attributes(state)  # gone: its node answers ENOENT
        with refusal(errno.ENOENT):
            await src.unlink(state, b"link")
        await dst.rmdir(state, b"moved")
        with refusal(errno.EXDEV):
            await dst.rename(state, b"full", UploadsDir("other"), b"full", 0)

    run(tmp_path, scenario, instances=("main", "other"))


def test_a_pending_file_is_written_read_and_truncated_in_its_spool(tmp_path: Path) -> None:
    async def scenario(state: MountState) -> None:
        uploads = UploadsDir("main")
        opened, node = await uploads.create(state, b"f", 0o640, os.O_WRONLY)
        assert isinstance(node, UploadFile) and opened.direct_io
        assert await opened.handle.write(state, 0, b"hello world") == 11
        attributes = node.attributes(state)
        assert attributes.size == 11 and attributes.timeout == 0  # pending: asked again
        assert attributes.mode == stat.S_IFREG | 0o640
        reader = (await node.open(state, 2, os.O_RDONLY)).handle
        with refusal(errno.EBADF):
            await reader.write(state, 0, b"x")
        assert await reader.read(state, 6, 100) == b"world"
        await node.setattr(state, SetAttributes(size=5, mode=0o755))
        assert await reader.read(state, 0, 100) == b"hello"
        assert node.attributes(state).mode == stat.S_IFREG | 0o755
        assert await node.xattrs(state) == {}  # not committed: no digest yet
        with refusal(errno.EISDIR):
            await uploads.setattr(state, SetAttributes(size=0))
        await reader.release(state)
        await opened.handle.release(state)  # never closed through flush: stays pending
        assert node.attributes(state).size == 5

    run(tmp_path, scenario)


# -- with a server ------------------------------------------------------------------------


def test_blob_files_exist_read_and_commit_through_a_server(
    tmp_path: Path, server: CasfsServer
) -> None:
    data = b"a small blob"
    digest = Digest.of_bytes(data)

    async def scenario(state: MountState) -> None:
        uploads = UploadsDir("main")
        opened, node = await uploads.create(state, b"f", 0o644, os.O_WRONLY)
        await opened.handle.write(state, 0, data)
        await opened.handle.commit(state, any_descriptor=False)  # close(): committed
        await opened.handle.release(state)
        assert (await node.xattrs(state))[b"user.casfs.digest"] == f"{digest}".encode()
        assert node.attributes(state).mode == stat.S_IFREG | 0o444

        hash_dir = await BlobsDir("main").lookup(state, digest.hash, OWNER)
        assert names(hash_dir.entries(state, OWNER)) == [str(digest.size)]
        blob = await hash_dir.lookup(state, str(digest.size), OWNER)
        assert blob == BlobFile("main", digest)
        with refusal(errno.ENOENT):  # the same hash with another size: not on the server
            await hash_dir.lookup(state, str(digest.size + 1), OWNER)

        state.cache.drop(digest)
        opened_blob = await blob.open(state, 7, os.O_RDONLY)
        assert opened_blob.keep_cache
        assert await opened_blob.handle.read(state, 0, 100) == data
        # A small blob fetched whole at lookup goes into the kernel's page cache at open.
        other = b"another small blob"
        await state.clients["main"].upload_bytes(other)
        other_digest = Digest.of_bytes(other)
        other_blob = await hash_dir_of(state, other_digest).lookup(
            state, str(other_digest.size), OWNER
        )
        await other_blob.open(state, 8, os.O_RDONLY)
        kernel = state.kernel
        assert isinstance(kernel, Kernel)
        assert kernel.stored == [(8, 0, other)]

    run(tmp_path, scenario, endpoint=server.endpoint)


def hash_dir_of(state: MountState, digest: Digest) -> HashDir:
    return HashDir("main", digest.function, digest.hash)
