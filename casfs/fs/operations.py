"""pyfuse3 operations: the second border, where casfs errors become errno values.

Every handler is wrapped by ``_fuse_errors``: ``FUSEError`` passes, a ``CasError`` becomes
its errno (logged in one line), anything else becomes EIO and is logged with its traceback.
Nothing else may escape into pyfuse3, which would end the mount.

Concurrency notes: pyfuse3 runs each request as a trio task in one thread, so the inode
table, handle tables and catalog need no locks; handlers interleave only at ``await``.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from casfs.cas.client import CasClient
from casfs.cas.errors import CasError, NotFound
from casfs.fs.blockcache import BlockCache, Readahead
from casfs.fs.catalog import Catalog
from casfs.fs.inodes import InodeTable
from casfs.fs.namespace import (
    BlobFile,
    BlobsDir,
    FunctionDir,
    HashDir,
    InstanceDir,
    Namespace,
    Node,
)
from casfs.resource import BlobName

log = logging.getLogger("casfs.fs")
P = ParamSpec("P")
R = TypeVar("R")

# Blobs never change, and the namespace only changes on remount: let the kernel cache both.
STATIC_TIMEOUT = 3600.0
BLOB_TIMEOUT = 24 * 3600.0
XATTR_DIGEST = b"user.casfs.digest"
XATTR_FUNCTION = b"user.casfs.digest_function"
XATTR_RESOURCE = b"user.casfs.resource_name"


def _fuse_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Translate every error a handler raises into a ``FUSEError``."""

    @functools.wraps(fn)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CasError as error:
            log.warning("%s: %s", fn.__name__, error)
            raise pyfuse3.FUSEError(error.errno) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


@dataclass
class _OpenBlob:
    node: BlobFile
    readahead: Readahead


class CasOperations(pyfuse3.Operations):
    """The read side of the mount: instances, ``blobs/`` and blob files."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        clients: Mapping[str, CasClient],
        namespace: Namespace,
        cache: BlockCache,
        *,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.clients = clients
        self.namespace = namespace
        self.cache = cache
        self.catalog = Catalog()
        self.inodes = InodeTable()
        self.read_only = read_only
        self._handles = itertools.count(1)
        self._open: dict[int, _OpenBlob] = {}
        self._listings: dict[int, list[tuple[str, Node]]] = {}
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._time_ns = time.time_ns()
        self.initialized = trio.Event()
        self._pin_static(self.namespace.static_children(self.inodes.node(pyfuse3.ROOT_INODE)))

    def _pin_static(self, entries: Sequence[tuple[str, Node]]) -> None:
        for _, node in entries:
            self.inodes.inode(node, pin=True)
            if isinstance(node, InstanceDir | BlobsDir):
                self._pin_static(self.namespace.static_children(node))

    def init(self) -> None:
        """The kernel's INIT is being answered (the reply goes out when this returns)."""
        self.initialized.set()

    # -- attributes -------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.inodes.node(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attributes(self, node: Node, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self._time_ns
        attrs.st_blksize = self.cache.block_size
        if isinstance(node, BlobFile):
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = node.digest.size
            attrs.st_blocks = (node.digest.size + 511) // 512
            attrs.entry_timeout = attrs.attr_timeout = BLOB_TIMEOUT
        else:
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
            attrs.entry_timeout = attrs.attr_timeout = STATIC_TIMEOUT
        return attrs

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self._node(inode), inode)

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Resolve a name; a blob file exists only if the server has it (asked once)."""
        parent = self._node(parent_inode)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        node = self.namespace.child(parent, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(node, BlobFile):
            client = self.clients[node.instance]
            if not await self.catalog.exists(node.instance, node.digest, client.find_missing):
                raise pyfuse3.FUSEError(errno.ENOENT)
        inode = self.inodes.lookup(node)
        return self._attributes(node, inode)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    # -- directories ------------------------------------------------------------------------

    def _entries(self, node: Node) -> list[tuple[str, Node]]:
        entries = self.namespace.static_children(node)
        if isinstance(node, BlobsDir | FunctionDir):
            function = node.function if isinstance(node, FunctionDir) else None
            for hash_ in self.catalog.hashes(node.instance, function):
                entry = self.namespace.child(node, hash_)
                if entry is not None:
                    entries.append((hash_, entry))
        elif isinstance(node, HashDir):
            for size in self.catalog.sizes(node.instance, node.function, node.hash):
                entries.append((str(size), self.namespace.child(node, str(size))))  # type: ignore[arg-type]
        return entries

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if isinstance(node, BlobFile):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = next(self._handles)
        self._listings[handle] = self._entries(node)
        return handle

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._listings.get(fh, [])
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            inode = self.inodes.inode(node)
            if not pyfuse3.readdir_reply(
                token, name.encode(), self._attributes(node, inode), index + 1
            ):
                self.inodes.forget(inode, 0)  # drop it again if the kernel never saw it
                return
            self.inodes.lookup(node)

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    # -- files ------------------------------------------------------------------------------

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if not isinstance(node, BlobFile):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EACCES)
        handle = next(self._handles)
        self._open[handle] = _OpenBlob(node, Readahead())
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Serve from the block cache; a blob that vanished from the server is EIO."""
        blob = self._open[fh]
        client = self.clients[blob.node.instance]
        try:
            data = await self.cache.read_file(
                client.read_range, blob.node.digest, off, size, blob.readahead
            )
        except NotFound as error:
            log.warning("read: %s vanished from the server: %s", blob.node.digest, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if data and off + len(data) == blob.node.digest.size:
            self.catalog.verify(blob.node.instance, blob.node.digest)
        return data

    @_fuse_errors
    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    # -- extended attributes ----------------------------------------------------------------

    def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        if not isinstance(node, BlobFile):
            return {}
        digest = node.digest
        return {
            XATTR_DIGEST: f"{digest.hash}/{digest.size}".encode(),
            XATTR_FUNCTION: digest.function.name_lower.encode(),
            XATTR_RESOURCE: BlobName(node.instance, digest).read_name().encode(),
        }

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self._xattrs(self._node(inode)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._xattrs(self._node(inode)))

    @_fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- the rest -----------------------------------------------------------------------------

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = self.cache.block_size
        data.f_namemax = 255
        return data

    def _refused(self) -> pyfuse3.FUSEError:
        """The error for a change to the read-only namespace."""
        return pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EACCES)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise self._refused()

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refused()

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refused()

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refused()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refused()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refused()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refused()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise self._refused()

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise self._refused()
