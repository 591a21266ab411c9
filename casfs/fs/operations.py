"""pyfuse3 operations: the second border, where casfs errors become errno values.

Every handler is wrapped by ``_fuse_errors``: ``FUSEError`` passes, a ``CasError`` or
``UploadError`` becomes its errno and an ``OSError`` (the spool disk) its own, each logged
in one line; anything else becomes EIO and is logged with its traceback. Nothing else may
escape into pyfuse3, which would end the mount. The wrapper also counts each call and each
error by errno (``FuseStats``), for ``casfs status`` and the metrics.

Uploads finish in ``flush`` (every ``close()``) and ``fsync``, where an error still reaches
the program; ``release`` only cleans up, since its errors reach no one.

Concurrency notes: pyfuse3 runs each request as a trio task in one thread, so the inode
table, handle tables, catalog and upload trees need no locks; handlers interleave only at
``await``. A file being finalized holds its own lock (see ``uploads.py``).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from casfs.cas.client import SMALL_READ, CasClient, Chunk
from casfs.cas.errors import CasError, NotFound
from casfs.digest import Digest
from casfs.fs.audience import Audience
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.blocks.readahead import Readahead
from casfs.fs.catalog import Catalog, FindMissing
from casfs.fs.inodes import InodeTable
from casfs.fs.namespace import (
    BlobFile,
    BlobsDir,
    FunctionDir,
    HashDir,
    InstanceDir,
    Namespace,
    Node,
    UploadNode,
    UploadsDir,
)
from casfs.fs.status import STATUS_XATTR, StatusAttribute
from casfs.fs.uploads import DirEntry, Entry, FileEntry, SymlinkEntry, UploadError, Uploads
from casfs.resource import BlobName

log = logging.getLogger("casfs.fs")
P = ParamSpec("P")
R = TypeVar("R")

# Blobs never change, and the namespace only changes on remount: let the kernel cache both.
STATIC_TIMEOUT = 3600.0
BLOB_TIMEOUT = 24 * 3600.0
# Files under uploads/ change: the kernel asks again soon.
UPLOAD_TIMEOUT = 1.0
XATTR_DIGEST = b"user.casfs.digest"
XATTR_FUNCTION = b"user.casfs.digest_function"
XATTR_RESOURCE = b"user.casfs.resource_name"
XATTR_STATUS = STATUS_XATTR.encode()  # on the mount's root: see casfs/fs/status.py


def _name(raw: bytes) -> str:
    """A new name in uploads/: it must be UTF-8 (REAPI names are strings)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None


@dataclass
class FuseStats:
    """What the mount was asked and what it answered: kept here, read by ``casfs status``
    and the metrics at scrape time (plain integers: the hot paths pay almost nothing)."""

    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, int]] = field(default_factory=Counter)  # (op, errno)
    read_bytes: int = 0
    written_bytes: int = 0


def _fuse_errors(
    fn: Callable[Concatenate[CasOperations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[CasOperations, P], Coroutine[Any, Any, R]]:
    """Translate every error a handler raises into a ``FUSEError``; count calls and errors."""
    op = fn.__name__

    @functools.wraps(fn)
    async def handler(self: CasOperations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        stats = self.stats
        stats.ops[op] += 1
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError as error:
            stats.errors[(op, error.errno)] += 1
            raise
        except (CasError, UploadError) as error:
            log.warning("%s: %s", op, error)
            code = error.errno
        except OSError as error:
            log.warning("%s: %s", op, error)
            code = error.errno or errno.EIO
        except Exception:
            log.exception("%s failed unexpectedly", op)
            code = errno.EIO
        stats.errors[(op, code)] += 1
        raise pyfuse3.FUSEError(code) from None

    return handler


@dataclass
class _OpenBlob:
    node: BlobFile
    readahead: Readahead


@dataclass
class _OpenUpload:
    entry: FileEntry
    writable: bool
    readahead: Readahead
    blob_inode: int | None = None  # a direct write over an existing blob's file


class CasOperations(pyfuse3.Operations):
    """The mount: instances, ``blobs/`` (read-only blobs) and ``uploads/`` (new blobs)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        clients: Mapping[str, CasClient],
        namespace: Namespace,
        cache: BlockCache,
        uploads: Uploads,
        *,
        read_only: bool = False,
        remote: str | None = None,
    ) -> None:
        super().__init__()
        # What ``casfs status`` says the mount is connected to; by default the endpoint.
        self.remote = remote or next(iter(clients.values())).config.endpoint
        self.started = time.time()
        self.stats = FuseStats()
        self.status = StatusAttribute(self)
        self.clients = clients
        self.namespace = namespace
        self.cache = cache
        self.uploads = uploads
        self.catalog = Catalog()
        self.inodes = InodeTable()
        self.read_only = read_only
        self._entries: weakref.WeakValueDictionary[int, Entry] = weakref.WeakValueDictionary()
        self._handles = itertools.count(1)
        self._open: dict[int, _OpenBlob | _OpenUpload] = {}
        self._listings: dict[int, list[tuple[str, Node]]] = {}
        self._uid = os.getuid()
        self._gid = os.getgid()
        self.audience = Audience(self._uid, self._gid, uploads.roots)
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

    # -- nodes and entries ------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.inodes.node(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _upload_node(self, instance: str, entry: Entry) -> Node:
        if entry is self.uploads.roots.get(instance):
            return UploadsDir(instance)
        self._entries[entry.id] = entry
        return UploadNode(instance, entry.id)

    def adopt(self, entry: FileEntry) -> None:
        """Make a recovered spool file reachable by inode."""
        self._entries[entry.id] = entry

    def _entry(self, node: Node) -> Entry | None:
        """The upload entry behind a node, or None for the read-only namespace."""
        if isinstance(node, UploadsDir):
            return self.uploads.roots[node.instance]
        if isinstance(node, UploadNode):
            entry = self._entries.get(node.id)
            if entry is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return entry
        return None

    def _directory(self, inode: int) -> tuple[str, DirEntry]:
        """The instance and upload directory of a parent inode; read-only places refuse."""
        node = self._node(inode)
        entry = self._entry(node)
        if entry is None:
            raise self._refused()
        if not isinstance(entry, DirEntry):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        assert isinstance(node, UploadsDir | UploadNode)
        return node.instance, entry

    def _refused(self) -> pyfuse3.FUSEError:
        """The error for a change to the read-only namespace."""
        return pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EACCES)

    def _writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    # -- attributes -------------------------------------------------------------------------

    def _attributes(self, node: Node, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self._time_ns
        attrs.st_blksize = self.cache.block_size
        entry = self._entry(node)
        if entry is not None:
            return self._upload_attributes(entry, attrs)
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

    def _upload_attributes(
        self, entry: Entry, attrs: pyfuse3.EntryAttributes
    ) -> pyfuse3.EntryAttributes:
        attrs.entry_timeout = attrs.attr_timeout = UPLOAD_TIMEOUT
        attrs.st_mtime_ns = attrs.st_ctime_ns = entry.mtime_ns
        if isinstance(entry, FileEntry):
            # Committed files are blobs now: read-only, keeping their executable bits.
            mode = entry.mode & 0o555 if entry.committed else entry.mode
            if not entry.committed:  # its size and mode change until it is committed
                attrs.entry_timeout = attrs.attr_timeout = 0
            attrs.st_mode = stat.S_IFREG | mode
            attrs.st_nlink = 1
            attrs.st_size = entry.size
            attrs.st_blocks = (entry.size + 511) // 512
        elif isinstance(entry, SymlinkEntry):
            attrs.st_mode = stat.S_IFLNK | 0o777
            attrs.st_nlink = 1
            attrs.st_size = len(os.fsencode(entry.target))
        else:
            attrs.st_mode = stat.S_IFDIR | (0o555 if self.read_only else 0o755)
            attrs.st_nlink = 2
        return attrs

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self._node(inode), inode)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """Truncate and chmod files in uploads/; everything else is read-only."""
        node = self._node(inode)
        entry = self._entry(node)
        if entry is None:
            raise self._refused()
        self._writable()
        if fields.update_size:
            if not isinstance(entry, FileEntry):
                raise pyfuse3.FUSEError(errno.EISDIR)
            await self.uploads.truncate(entry, attr.st_size)
        if fields.update_mode and isinstance(entry, FileEntry):
            entry.mode = stat.S_IMODE(attr.st_mode)  # committed files show it read-only
            entry.invalidate()  # the executable bit is part of the Directory digest
            self.uploads.spool.record(entry)
        if fields.update_mtime:
            entry.mtime_ns = attr.st_mtime_ns
            if isinstance(entry, FileEntry) and entry.spool is not None:
                # A pending file comes back after a remount with its spool file's mtime.
                os.utime(entry.spool, ns=(entry.mtime_ns, entry.mtime_ns))
        self.uploads.saved(entry)
        return self._attributes(node, inode)

    # -- names ------------------------------------------------------------------------------

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
        directory = self._entry(parent)
        if isinstance(directory, DirEntry):
            assert isinstance(parent, UploadsDir | UploadNode)
            child = directory.children.get(text)
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = self._upload_node(parent.instance, child)
        else:
            found = self.namespace.child(parent, text)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = found
            if isinstance(node, BlobFile):
                probe = self._existence_probe(node.instance, node.digest)
                if not await self.catalog.exists(node.instance, node.digest, probe):
                    raise pyfuse3.FUSEError(errno.ENOENT)
                self.audience.named(ctx.uid, node.instance, node.digest)
        return self._attributes(node, self.inodes.lookup(node))

    def _existence_probe(self, instance: str, digest: Digest) -> FindMissing:
        """How a lookup asks the server whether a blob exists: FindMissingBlobs, or for a
        small blob a fetch of the whole blob (one BatchReadBlobs, checked against its
        digest) into the block cache, so that the read which usually follows costs no
        call. Both are one call; a missing blob is NOT_FOUND either way.

        FindMissingBlobs is asked with ``find_missing_exact``, which confirms the size on a
        remote that answers by hash alone. Until the remote is known to answer by digest,
        a small blob is asked that way too before it is fetched: a fetch under a wrong
        size may delete the blob on such a remote (buildbox-casd)."""
        client = self.clients[instance]
        if (
            not 0 < digest.size <= min(SMALL_READ, self.cache.block_size)
            or not digest.function.hashable
            or self.cache.covered(digest, 0)  # (for another instance, maybe: ask this one)
        ):
            return client.find_missing_exact

        async def fetch(digests: Iterable[Digest]) -> set[Digest]:
            if not client.quirks.size_check.trusted:
                missing = await client.find_missing_exact(digests)
                if missing or not client.quirks.size_check.trusted:
                    return missing
            try:
                await self.cache.block(client, digest, 0)
            except NotFound:
                return {digest}
            return set()

        return fetch

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    def _new_entry(self, instance: str, entry: Entry) -> pyfuse3.EntryAttributes:
        node = self._upload_node(instance, entry)
        return self._attributes(node, self.inodes.lookup(node))

    def _add(
        self, parent_inode: int, name: bytes, entry: DirEntry | SymlinkEntry
    ) -> pyfuse3.EntryAttributes:
        """Put a new directory or symlink in an upload directory (EEXIST if taken)."""
        instance, parent = self._directory(parent_inode)
        self._writable()
        entry.name, entry.parent = _name(name), parent
        if entry.name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        parent.children[entry.name] = entry
        entry.modified()
        self.uploads.saved(entry)
        return self._new_entry(instance, entry)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._add(parent_inode, name, DirEntry(name="", parent=None))

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        entry = SymlinkEntry(name="", parent=None, target=os.fsdecode(target))
        return self._add(parent_inode, name, entry)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = self._entry(self._node(inode))
        if not isinstance(entry, SymlinkEntry):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.target)

    def _child_to_remove(self, parent_inode: int, name: bytes) -> Entry:
        _, parent = self._directory(parent_inode)
        self._writable()
        entry = parent.children.get(os.fsdecode(name))
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entry = self._child_to_remove(parent_inode, name)
        while await self.uploads.wait_for_commits(entry):  # then look again: no checkpoint
            entry = self._child_to_remove(parent_inode, name)
        if isinstance(entry, DirEntry):
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.uploads.remove(entry)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entry = self._child_to_remove(parent_inode, name)
        if not isinstance(entry, DirEntry):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if entry.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self.uploads.remove(entry)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """Move within one instance's uploads/ tree (POSIX replace rules). A file being
        committed, moved or replaced, is moved once its commit is done."""
        instance_old, old_parent = self._directory(parent_inode_old)
        instance_new, new_parent = self._directory(parent_inode_new)
        self._writable()
        if instance_old != instance_new:
            raise pyfuse3.FUSEError(errno.EXDEV)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old_name, new_name = os.fsdecode(name_old), _name(name_new)
        while await self.uploads.wait_for_commits(  # then look again: no checkpoint after
            old_parent.children.get(old_name), new_parent.children.get(new_name)
        ):
            pass
        entry = old_parent.children.get(old_name)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(entry, FileEntry):
            self.uploads.check_idle(entry)
        ancestor: DirEntry | None = new_parent
        while ancestor is not None:  # no moving a directory into itself
            if ancestor is entry:
                raise pyfuse3.FUSEError(errno.EINVAL)
            ancestor = ancestor.parent
        target = new_parent.children.get(new_name)
        if target is entry:
            return
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if isinstance(target, DirEntry):
                if not isinstance(entry, DirEntry):
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if target.children:
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            elif isinstance(entry, DirEntry):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self.uploads.remove(target)
        del old_parent.children[old_name]
        old_parent.modified()
        entry.name, entry.parent = new_name, new_parent
        new_parent.children[new_name] = entry
        new_parent.modified()
        self.uploads.moved(entry, old_parent, old_name)

    # -- directories ------------------------------------------------------------------------

    def _entries_of(self, node: Node, ctx: pyfuse3.RequestContext) -> list[tuple[str, Node]]:
        """The entries of a directory as the caller may list them (``audience.py``: blobs
        seen through another user's private uploads are not listed to them)."""
        directory = self._entry(node)
        if isinstance(directory, DirEntry):
            assert isinstance(node, UploadsDir | UploadNode)
            return [
                (name, self._upload_node(node.instance, child))
                for name, child in sorted(directory.children.items())
            ]
        entries = self.namespace.static_children(node)
        if isinstance(node, BlobsDir | FunctionDir):
            function = node.function if isinstance(node, FunctionDir) else None
            hashes = self.catalog.hashes(node.instance, function)
            for hash_ in self.audience.visible(ctx.uid, ctx.gid, node.instance, hashes):
                entry = self.namespace.child(node, hash_)
                if entry is not None:
                    entries.append((hash_, entry))
        elif isinstance(node, HashDir):
            if not any(self.audience.visible(ctx.uid, ctx.gid, node.instance, [node.hash])):
                return entries
            for size in self.catalog.sizes(node.instance, node.function, node.hash):
                blob = self.namespace.child(node, str(size))
                if blob is not None:
                    entries.append((str(size), blob))
        return entries

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        entry = self._entry(node)
        if isinstance(node, BlobFile) or (entry is not None and not isinstance(entry, DirEntry)):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = next(self._handles)
        self._listings[handle] = self._entries_of(node, ctx)
        return handle

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._listings.get(fh, [])
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            try:
                self._entry(node)
            except pyfuse3.FUSEError:
                continue  # removed since the listing began
            inode = self.inodes.inode(node)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attributes(node, inode), index + 1
            ):
                self.inodes.forget(inode, 0)  # drop it again if the kernel never saw it
                return
            self.inodes.lookup(node)

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    # -- files ------------------------------------------------------------------------------

    async def _open_upload(
        self, entry: FileEntry, flags: int, *, created: bool = False, blob_inode: int | None = None
    ) -> pyfuse3.FileInfo:
        """Open a file of uploads/ (or a direct write of a blob's name).

        A write-only descriptor gets ``direct_io``: its writes come here straight from the
        program's buffer, not copied into the kernel's page cache first (a ``cp`` of 1 GiB
        no longer fills 1 GiB of new pages it never reads; its write phase is about a tenth
        shorter). It cannot read, so it loses no caching, and it cannot be mapped, so
        shared writable mappings, which ``direct_io`` would refuse, keep working through
        read-write descriptors, which stay cached. The kernel keeps the two coherent: a
        direct write drops the cached pages it covers.
        """
        access = flags & os.O_ACCMODE
        writable = created or access != os.O_RDONLY  # a new file is written, if only empty
        truncate = not created and bool(flags & os.O_TRUNC)
        await self.uploads.open(entry, write=writable, truncate=truncate)
        handle = next(self._handles)
        self._open[handle] = _OpenUpload(entry, writable, Readahead(), blob_inode)
        return pyfuse3.FileInfo(fh=handle, direct_io=access == os.O_WRONLY)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """A new file in uploads/, or a direct write of ``blobs/<hash>/<size>``."""
        self._writable()
        parent = self._node(parent_inode)
        text = _name(name)
        if isinstance(parent, HashDir):
            blob = self.namespace.child(parent, text)
            if not isinstance(blob, BlobFile):
                raise pyfuse3.FUSEError(errno.EINVAL)
            entry = self.uploads.new_file(blob.instance, None, text, mode, blob.digest)
            instance = blob.instance
        else:
            instance, directory = self._directory(parent_inode)
            while await self.uploads.wait_for_commits(directory.children.get(text)):
                pass  # a file it replaces is being committed; then look again
            entry = self.uploads.new_file(instance, directory, text, mode, None)
        opened = await self._open_upload(entry, flags, created=True)
        return opened, self._new_entry(instance, entry)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        entry = self._entry(node)
        if isinstance(entry, FileEntry):
            if writing:
                self._writable()
            return await self._open_upload(entry, flags)
        if entry is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not isinstance(node, BlobFile):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if writing:
            # Writing an existing blob's name: verified on close like any direct write.
            self._writable()
            direct = self.uploads.new_file(node.instance, None, "", 0o444, node.digest)
            return await self._open_upload(direct, flags, created=True, blob_inode=inode)
        await self._store_small_blob(inode, node.instance, node.digest)
        handle = next(self._handles)
        self._open[handle] = _OpenBlob(node, Readahead())
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    async def _store_small_blob(self, inode: int, instance: str, digest: Digest) -> None:
        """Hand a small blob that is in the cache (its lookup fetched it whole, see
        ``_existence_probe``) to the kernel's page cache (FUSE_NOTIFY_STORE), so that
        reading it costs no FUSE read: a round trip to this process fewer per small file.

        Called in ``open``, where the kernel knows the inode (it refuses a store for an
        inode it does not know), and before the reply with ``keep_cache``, which keeps the
        pages. A kernel that refuses (an ``OSError``) leaves the reads to ``read``. The
        store waits for the page's lock, which a READ of the same page holds until this
        process answers it, so it runs in a worker thread: the trio thread stays free to
        answer that READ. Cancelled, the open goes on and the store finishes alone.
        """
        if not 0 < digest.size <= min(SMALL_READ, self.cache.block_size):
            return
        data = self.cache.cached(digest, 0)
        if data is None:
            return
        try:
            await trio.to_thread.run_sync(
                pyfuse3.notify_store, inode, 0, bytes(data), abandon_on_cancel=True
            )
        except OSError as error:
            log.debug("%s: not put in the page cache: %s", digest, error)
            return
        self.catalog.verify(instance, digest)  # as a read of its last byte would

    async def _read_blob(
        self, instance: str, digest: Digest, off: int, size: int, readahead: Readahead
    ) -> Chunk:
        client = self.clients[instance]
        try:
            data = await self.cache.read_file(client, digest, off, size, readahead)
        except NotFound as error:
            log.warning("read: %s vanished from the server: %s", digest, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if data and off + len(data) == digest.size:
            self.catalog.verify(instance, digest)
        return data

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> Chunk:  # type: ignore[override]
        """Blobs from the block cache (a blob that vanished is EIO); pending uploads from
        their spool file; committed uploads from the CAS.

        A block is returned as a view into the message it arrived in, without a copy:
        pyfuse3 replies with any buffer, although its stub says ``bytes``."""
        data = await self._read(fh, off, size)
        self.stats.read_bytes += len(data)
        return data

    async def _read(self, fh: int, off: int, size: int) -> Chunk:
        handle = self._open[fh]
        if isinstance(handle, _OpenBlob):
            node = handle.node
            return await self._read_blob(node.instance, node.digest, off, size, handle.readahead)
        entry = handle.entry
        if entry.spool is not None:
            return await self.uploads.read_spool(entry, off, size)
        if entry.digest is None:  # a direct write refused for its content: nothing to read
            raise pyfuse3.FUSEError(errno.EIO)
        return await self._read_blob(entry.instance, entry.digest, off, size, handle.readahead)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._open[fh]
        if not isinstance(handle, _OpenUpload) or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        written = await self.uploads.write(handle.entry, off, buf)
        self.stats.written_bytes += written
        return written

    async def _commit(self, fh: int, *, any_descriptor: bool = False) -> None:
        """Commit the file of a writable descriptor (or, ``any_descriptor``, of any)."""
        handle = self._open.get(fh)
        if not isinstance(handle, _OpenUpload) or not (handle.writable or any_descriptor):
            return
        entry = handle.entry
        if entry.committed or entry.unlinked:
            return
        try:
            digest = await self.uploads.finalize(entry)
        except Exception:
            if entry.digest is not None:  # committed, and then its earlier loss reported
                self.catalog.found(entry.instance, entry.digest)
            if handle.blob_inode is not None:
                await self._drop_cached_pages(handle.blob_inode)
            raise
        self.catalog.found(entry.instance, digest)

    async def _drop_cached_pages(self, inode: int) -> None:
        """Make the kernel forget the pages it caches of a blob's file, after a write to
        the blob's name failed to commit. Writes through a read-write descriptor go through
        those pages (a write-only descriptor's go around them), and a reader that has the
        blob open must not be served refused bytes. The invalidation waits for page locks,
        which a READ holds until the trio thread answers it, so it runs in a worker thread;
        cancelled (the mount is ending), the invalidation finishes alone."""
        try:
            await trio.to_thread.run_sync(
                pyfuse3.invalidate_inode, inode, False, abandon_on_cancel=True
            )
        except OSError as error:  # the kernel no longer knows the inode: nothing cached
            log.debug("inode %d: cached pages not dropped: %s", inode, error)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        """``close()``: commit what was written, and report the outcome to the program.

        Every close of a changed file commits it (a close cannot tell whether it is the
        last: duplicates, forked children and the kernel's late releases all look alike).
        A write through a descriptor still open makes it pending again, and its close
        commits it again.
        """
        await self._commit(fh)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """``fsync()``: commit now, and retry a failed upload (its spool is still there),
        through any descriptor of the file: ``sync FILE`` opens it read-only."""
        await self._commit(fh, any_descriptor=True)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        """Clean up; a file whose upload failed stays spooled for fsync or the next mount."""
        handle = self._open.pop(fh, None)
        if not isinstance(handle, _OpenUpload):
            return
        entry = handle.entry
        await self.uploads.release(entry, wrote=handle.writable)
        if handle.blob_inode is not None and not entry.committed and not entry.opens:
            await self._drop_cached_pages(handle.blob_inode)  # written through a mapping
        if handle.writable and not entry.opens and not entry.committed and not entry.unlinked:
            log.info("%s stays spooled, not uploaded", entry.label())

    # -- extended attributes ----------------------------------------------------------------

    def _blob_xattrs(self, instance: str, digest: Digest) -> dict[bytes, bytes]:
        return {
            XATTR_DIGEST: f"{digest.hash}/{digest.size}".encode(),
            XATTR_FUNCTION: digest.function.name_lower.encode(),
            XATTR_RESOURCE: BlobName(instance, digest).read_name().encode(),
        }

    async def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        if isinstance(node, BlobFile):
            return self._blob_xattrs(node.instance, node.digest)
        entry = self._entry(node)
        if entry is None or isinstance(entry, SymlinkEntry):
            return {}
        assert isinstance(node, UploadsDir | UploadNode)
        if isinstance(entry, FileEntry):
            if not entry.committed or entry.digest is None:
                return {}
            return self._blob_xattrs(node.instance, entry.digest)
        assert isinstance(entry, DirEntry)
        digest = await self.uploads.directory_digest(entry, node.instance)
        return self._blob_xattrs(node.instance, digest)

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE and name == XATTR_STATUS:
            return self.status.value()
        node = self._node(inode)
        entry = self._entry(node)
        if isinstance(entry, DirEntry):
            if not name.startswith(b"user.casfs."):
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # do not upload a tree for other names
            if not self.audience.may_read_tree(ctx.uid, ctx.gid, entry):
                raise pyfuse3.FUSEError(errno.EACCES)  # its Directory names the files' blobs
        value = (await self._xattrs(node)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return [XATTR_STATUS]
        node = self._node(inode)
        if isinstance(self._entry(node), DirEntry):
            return [XATTR_DIGEST, XATTR_FUNCTION, XATTR_RESOURCE]
        return list(await self._xattrs(node))

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

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no devices, fifos or sockets in a CAS

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)
