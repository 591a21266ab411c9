"""A REAPI Directory tree as read-only nodes: ``TreeDir`` (a Directory), ``TreeFile`` (a
file of one, read through the block cache like a blob), ``LinkNode`` (a symlink), and
``ContentFile`` (bytes given inline, or a blob by digest: what ``actions/`` shows).

A tree's directories are fetched when first looked up or listed (``fs/treeview.py``:
checked against their digests; a bad one is EIO, a missing one ENOENT), opening a file
fetches its directory's small files ahead in batches, and a file's bytes come through the same
block cache and ``BlobHandle`` as ``blobs/`` (a missing blob is EIO at read). Every
directory and file answers ``user.casfs.digest`` (a directory: its Directory digest).

Identity: a directory node names its place in the mount (``place``, the path from the
mount's root), so each directory has one parent as the kernel requires, even when one
Directory appears at several paths; a file or symlink names its content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

import casfs.fs.nodes.blobio as blobio
from casfs.cas.client import Chunk
from casfs.cas.errors import CasError
from casfs.digest import Digest, DigestFunction
from casfs.fs.nodes.base import (
    BLOB_TIMEOUT,
    UPLOAD_TIMEOUT,
    Attributes,
    Caller,
    Handle,
    Node,
    Opened,
)
from casfs.fs.nodes.blobfile import BlobFile, BlobHandle
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.trees import model
from casfs.trees.actions import Content, InCas, Inline

if TYPE_CHECKING:
    from casfs.fs.treeview import TreeView


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a tree's Directories come from: the CAS, each by its digest (``tree`` None),
    or an output directory's Tree message (its digest), which holds them all."""

    instance: str
    tree: Digest | None = None


def view(state: MountState) -> TreeView:
    """The mount's tree view; a mount without one has no trees (ENOENT)."""
    if state.trees is None:
        raise NodeError(errno.ENOENT)
    return state.trees


def _file_mode(executable: bool) -> int:
    return stat.S_IFREG | (0o555 if executable else 0o444)


async def open_blob(state: MountState, inode: int, instance: str, digest: Digest) -> Opened:
    """A blob open for reading, as ``blobs/`` opens one: a small blob whose block is in
    the cache, or on its way in a batch, goes to the kernel's page cache first (once per
    inode: ``fs/pagestores.py``)."""
    if (
        0 < digest.size <= state.cache.block_size
        and not state.pages.holds(inode, digest)
        and state.cache.covered(digest, 0)
    ):
        with contextlib.suppress(CasError):  # the read reports it (a missing blob: EIO)
            await state.cache.block(state.clients[instance], digest, 0)
        await blobio.store_small_blob(state, inode, instance, digest)
    return Opened(BlobHandle(BlobFile(instance, digest)), keep_cache=True)


def _read_only(state: MountState, flags: int) -> None:
    if flags & os.O_ACCMODE != os.O_RDONLY:
        raise state.refused()


@dataclass(frozen=True, slots=True)
class TreeDir(Node):
    """A Directory of a tree at ``place`` (``depth`` directories below the tree's root)."""

    origin: Origin
    place: str
    digest: Digest
    depth: int = 0

    def attributes(self, state: MountState) -> Attributes:
        """A directory; its mtime and link count once its Directory is here (until then
        the kernel is told to ask again soon)."""
        found = state.trees.cached(self.origin, self.digest) if state.trees else None
        if found is None:
            return Attributes.directory(timeout=UPLOAD_TIMEOUT)
        attributes = Attributes.directory(timeout=BLOB_TIMEOUT)
        attributes.nlink = 2 + len(found.directories)
        attributes.mtime_ns = found.mtime_ns
        return attributes

    async def directory(self, state: MountState) -> model.Directory:
        """The Directory (``NodeError`` ENOENT if missing, EIO if bad or deeper below
        its tree's root than the limits allow)."""
        trees = view(state)
        if self.depth > trees.limits.max_depth:
            too_deep = model.TooDeep(f"{self.place}: deeper than {trees.limits.max_depth}")
            raise trees.refused(self.digest, too_deep)
        return await trees.directory(self.origin, self.digest)

    def _child(self, state: MountState, entry: model.Node) -> Node:
        if isinstance(entry, model.FileNode):
            return TreeFile(self, entry.name, entry.digest, entry.executable, entry.mtime_ns)
        if isinstance(entry, model.SymlinkNode):
            return LinkNode(entry.target, entry.mtime_ns)
        return TreeDir(self.origin, f"{self.place}/{entry.name}", entry.digest, self.depth + 1)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """A child; a directory's own Directory is fetched first (ENOENT if missing, EIO
        if bad or deeper than the limits allow)."""
        entry = view(state).names(await self.directory(state)).get(name)
        if entry is None:
            raise NodeError(errno.ENOENT)
        child = self._child(state, entry)
        if isinstance(child, TreeDir):
            await child.directory(state)
        return child

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        found = view(state).cached(self.origin, self.digest)
        if found is None:
            raise NodeError(errno.EIO)  # ``listing`` fetches it; this is never asked first
        return sorted(((n, self._child(state, e)) for n, e in found.entries.items()))

    async def listing(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        """The entries, the Directory fetched if need be. Its small files are not fetched
        yet: ``ls -lR`` lists every directory and reads no file (the first file opened
        fetches them)."""
        directory = await self.directory(state)
        return sorted(((n, self._child(state, e)) for n, e in directory.entries.items()))

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return blobio.blob_xattrs(self.origin.instance, self.digest)


@dataclass(frozen=True, slots=True)
class TreeFile(Node):
    """A file of a tree: its blob, with the Directory's size, mode and mtime."""

    parent: TreeDir
    name: str
    digest: Digest
    executable: bool
    mtime_ns: int | None = None

    def attributes(self, state: MountState) -> Attributes:
        return Attributes(
            mode=_file_mode(self.executable),
            size=self.digest.size,
            timeout=BLOB_TIMEOUT,
            mtime_ns=self.mtime_ns,
        )

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        """Read-only; the first file opened of a directory fetches its small files."""
        _read_only(state, flags)
        digest = self.digest
        if 0 < digest.size <= state.cache.block_size and not state.pages.holds(inode, digest):
            parent = self.parent
            view(state).small_files(parent.origin, await parent.directory(state))
        return await open_blob(state, inode, parent_instance(self.parent), self.digest)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return blobio.blob_xattrs(parent_instance(self.parent), self.digest)


def parent_instance(directory: TreeDir) -> str:
    return directory.origin.instance


@dataclass(frozen=True, slots=True)
class LinkNode(Node):
    """A symlink of a tree or an action's outputs."""

    target: str
    mtime_ns: int | None = None

    def attributes(self, state: MountState) -> Attributes:
        size = len(os.fsencode(self.target))
        return Attributes(
            mode=stat.S_IFLNK | 0o777, size=size, timeout=BLOB_TIMEOUT, mtime_ns=self.mtime_ns
        )

    def readlink(self, state: MountState) -> str:
        return self.target


@dataclass(eq=False)
class InlineHandle(Handle):
    """Bytes held in memory (a small file made from an ActionResult)."""

    data: bytes

    async def read(self, state: MountState, offset: int, size: int) -> Chunk:
        return self.data[offset : offset + size]


@dataclass(frozen=True, slots=True)
class ContentFile(Node):
    """A read-only file whose bytes are given (``Inline``) or a blob (``InCas``)."""

    instance: str
    content: Content
    function: DigestFunction
    executable: bool = False

    def _digest(self) -> Digest:
        content = self.content
        if isinstance(content, InCas):
            return content.digest
        return Digest.of_bytes(content.data, self.function)

    def attributes(self, state: MountState) -> Attributes:
        content = self.content
        size = content.digest.size if isinstance(content, InCas) else len(content.data)
        return Attributes(mode=_file_mode(self.executable), size=size, timeout=BLOB_TIMEOUT)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        _read_only(state, flags)
        content = self.content
        if isinstance(content, Inline):
            return Opened(InlineHandle(content.data), keep_cache=True)
        return await open_blob(state, inode, self.instance, content.digest)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return blobio.blob_xattrs(self.instance, self._digest())
