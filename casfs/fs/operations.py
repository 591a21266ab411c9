"""pyfuse3 operations: a thin adapter from FUSE requests to the mount's nodes.

It owns the inode table (``inodes.py``) and the tables of open files and directory
listings; each handler finds the node or handle a request names and asks it
(``fs/nodes/``: every kind of node answers lookup, getattr, readdir, open, read, getxattr
and, where it may, the changes itself). No handler here knows what kind of node it holds.

This is the second border, where casfs errors become errno values: every handler is
wrapped by ``fuse_errors`` (``fuseerrors.py``, which says how each error maps), and
nothing but a ``FUSEError`` leaves a handler; it also counts calls and errors by errno
(``FuseStats``), for ``casfs status`` and the metrics.

Uploads finish in ``flush`` (every ``close()``) and ``fsync``, where an error still reaches
the program; ``release`` only cleans up, since its errors reach no one.

Concurrency notes: pyfuse3 runs each request as a trio task in one thread, so the inode
table, handle tables, catalog and upload trees need no locks; handlers interleave only at
``await``. A file being committed holds its own lock (see ``uploadcommit.py``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import ParamSpec, TypeVar

import pyfuse3
import trio

from casfs.cas.client import Chunk
from casfs.cas.remote import BlobRemote
from casfs.fs.assetcatalog import MountAssets
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.fuseerrors import fuse_errors
from casfs.fs.inodes import InodeTable
from casfs.fs.namespace import Namespace
from casfs.fs.nodes import (
    ROOT,
    Attributes,
    Caller,
    Handle,
    MountState,
    Node,
    NodeError,
    Opened,
    SetAttributes,
)
from casfs.fs.nodes.errors import NO_ATTRIBUTE
from casfs.fs.stats import FuseStats, MountStats, Snapshot
from casfs.fs.status import StatusAttribute
from casfs.fs.treeview import TreeView
from casfs.fs.uploads import FileEntry, Uploads

log = logging.getLogger("casfs.fs")
P = ParamSpec("P")
R = TypeVar("R")


class _Kernel:
    """The kernel's caches through pyfuse3's notifications (``nodes.state.Kernel``)."""

    def notify_store(self, inode: int, offset: int, data: bytes) -> None:
        pyfuse3.notify_store(inode, offset, data)

    def invalidate_inode(self, inode: int) -> None:
        pyfuse3.invalidate_inode(inode, False)


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid)


class CasOperations(pyfuse3.Operations):
    """The mount: instances, ``blobs/`` (read-only blobs) and ``uploads/`` (new blobs)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        clients: Mapping[str, BlobRemote],
        namespace: Namespace,
        cache: BlockCache,
        uploads: Uploads,
        *,
        read_only: bool = False,
        remote: str | None = None,
        assets: MountAssets | None = None,
        trees: TreeView | None = None,
    ) -> None:
        super().__init__()
        self.stats = FuseStats()
        # What ``casfs status`` says the mount is connected to; by default the endpoint.
        self.mount_stats = MountStats(
            remote=remote or next(iter(clients.values())).config.endpoint,
            clients=clients,
            cache=cache,
            uploads=uploads,
            read_only=read_only,
            fuse=self.stats,
        )
        self.status = StatusAttribute(self)
        self.uploads = uploads
        self.cache = cache
        self.read_only = read_only
        self.state = MountState(
            clients=clients,
            namespace=namespace,
            cache=cache,
            uploads=uploads,
            kernel=_Kernel(),
            status=self.status.value,
            read_only=read_only,
            trees=trees,
            uid=os.getuid(),
            gid=os.getgid(),
        )
        if assets is not None:
            self.state.assets = assets
            self.mount_stats.assets = assets.status
        self.catalog = self.state.catalog
        self.inodes = InodeTable(ROOT)
        self._handles = itertools.count(1)
        self._open: dict[int, Handle] = {}
        self._listings: dict[int, list[tuple[str, Node]]] = {}
        self.initialized = trio.Event()
        self._pin_static(ROOT)

    def _pin_static(self, node: Node) -> None:
        for _, child in node.static_children(self.state):
            if child.pinned:
                self.inodes.inode(child, pin=True)
                self._pin_static(child)

    def init(self) -> None:
        """The kernel's INIT is being answered (the reply goes out when this returns)."""
        self.initialized.set()

    def snapshot(self) -> Snapshot:
        """Every figure of the mount now (``fs/stats.py``), for status and metrics."""
        return self.mount_stats.snapshot()

    def adopt(self, entry: FileEntry) -> None:
        """Make a recovered spool file reachable by inode."""
        self.state.entries[entry.id] = entry

    # -- tables -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.inodes.node(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _reply(self, attributes: Attributes, inode: int) -> pyfuse3.EntryAttributes:
        """A node's attributes as pyfuse3 replies with them."""
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid = self.state.uid
        attrs.st_gid = self.state.gid
        attrs.st_atime_ns = self.state.started_ns
        mtime = attributes.mtime_ns
        attrs.st_mtime_ns = attrs.st_ctime_ns = self.state.started_ns if mtime is None else mtime
        attrs.st_blksize = self.cache.block_size
        attrs.st_mode = attributes.mode
        attrs.st_nlink = attributes.nlink
        attrs.st_size = attributes.size
        if stat.S_ISREG(attributes.mode):
            attrs.st_blocks = (attributes.size + 511) // 512
        attrs.entry_timeout = attrs.attr_timeout = attributes.timeout
        return attrs

    def _looked_up(self, node: Node) -> pyfuse3.EntryAttributes:
        """The reply to a request that makes the kernel know ``node`` (one lookup more)."""
        attributes = node.attributes(self.state)
        return self._reply(attributes, self.inodes.lookup(node))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            if self.inodes.forget(inode, count):
                self.state.pages.forget(inode)

    # -- attributes and names ---------------------------------------------------------------

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._reply(self._node(inode).attributes(self.state), inode)

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        changes = SetAttributes(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        await node.setattr(self.state, changes)
        return self._reply(node.attributes(self.state), inode)

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        node = await parent.lookup(self.state, text, _caller(ctx))
        return self._looked_up(node)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self._node(parent_inode).mkdir(self.state, name, mode)
        return self._looked_up(node)

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        node = await parent.symlink(self.state, name, os.fsdecode(target))
        return self._looked_up(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(self._node(inode).readlink(self.state))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._node(parent_inode).unlink(self.state, name)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._node(parent_inode).rmdir(self.state, name)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        await old_parent.rename(self.state, name_old, new_parent, name_new, flags)

    # -- directories ------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        entries = await self._node(inode).listing(self.state, _caller(ctx))
        handle = next(self._handles)
        self._listings[handle] = entries
        return handle

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._listings.get(fh, [])
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            try:
                attributes = node.attributes(self.state)
            except NodeError:
                continue  # removed since the listing began
            inode = self.inodes.inode(node)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._reply(attributes, inode), index + 1
            ):
                self.inodes.forget(inode, 0)  # drop it again if the kernel never saw it
                return
            self.inodes.lookup(node)

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    # -- files ------------------------------------------------------------------------------

    def _file_info(self, opened: Opened) -> pyfuse3.FileInfo:
        fh = next(self._handles)
        self._open[fh] = opened.handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """A new file in uploads/, or a direct write of ``blobs/<hash>/<size>``."""
        state = self.state
        state.writable()
        opened, node = await self._node(parent_inode).create(state, name, mode, flags)
        return self._file_info(opened), self._looked_up(node)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._file_info(await self._node(inode).open(self.state, inode, flags))

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> Chunk:  # type: ignore[override]
        """Blobs from the block cache (a blob that vanished is EIO); pending uploads from
        their spool file; committed uploads from the CAS.

        A block is returned as a view into the message it arrived in, without a copy:
        pyfuse3 replies with any buffer, although its stub says ``bytes``."""
        data = await self._open[fh].read(self.state, off, size)
        self.stats.read_bytes += len(data)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        written = await self._open[fh].write(self.state, off, buf)
        self.stats.written_bytes += written
        return written

    @fuse_errors
    async def flush(self, fh: int) -> None:
        """``close()``: commit what was written, and report the outcome to the program."""
        handle = self._open.get(fh)
        if handle is not None:
            await handle.commit(self.state, any_descriptor=False)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """``fsync()``: commit now, and retry a failed upload (its spool is still there),
        through any descriptor of the file: ``sync FILE`` opens it read-only."""
        handle = self._open.get(fh)
        if handle is not None:
            await handle.commit(self.state, any_descriptor=True)

    @fuse_errors
    async def release(self, fh: int) -> None:
        """Clean up; a file whose upload failed stays spooled for fsync or the next mount."""
        handle = self._open.pop(fh, None)
        if handle is not None:
            await handle.release(self.state)

    # -- extended attributes ----------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """A ``user.*`` attribute of the node. Every other namespace is empty here, and is
        answered before the node is looked at: ``ls -l`` asks for ``security.selinux`` and
        ``system.posix_acl_access`` of every name it lists."""
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(NO_ATTRIBUTE)
        return await self._node(inode).getxattr(self.state, name, _caller(ctx))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self._node(inode).listxattr(self.state)

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._node(inode).setxattr(self.state, name, value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._node(inode).removexattr(self.state, name)

    # -- the rest -----------------------------------------------------------------------------

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = self.cache.block_size
        data.f_namemax = 255
        return data

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no devices, fifos or sockets in a CAS

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)
