"""The nodes of ``<instance>/uploads/``: the tree's root, its directories, files and
symlinks, each named by the id of its entry in ``fs/uploads.py``. The rules for changing
the tree (create, mkdir, symlink, unlink, rmdir, rename with POSIX's replace rules,
setattr) are here; the entries' lifecycle (spool, commit, journal) is ``Uploads``'s.

Concurrency notes: a change that waits for a commit in progress (``wait_for_commits``)
looks its entries up again afterwards and changes them with no checkpoint in between.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import casfs.fs.nodes.blobio as blobio
from casfs.fs.nodes.assetpush import set_upload_xattr, upload_xattrs
from casfs.fs.nodes.base import (
    UPLOAD_TIMEOUT,
    Attributes,
    Caller,
    Node,
    Opened,
    SetAttributes,
    new_name,
)
from casfs.fs.nodes.errors import NO_ATTRIBUTE, NodeError
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.tvixtrees import directory_xattr_names, directory_xattrs
from casfs.fs.nodes.uploadfiles import open_upload
from casfs.fs.uploadentries import DirEntry, Entry, FileEntry, SymlinkEntry

# rename(2)'s flags, as Linux (and pyfuse3) number them.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def upload_node(state: MountState, instance: str, entry: Entry) -> Node:
    """The node of an entry of ``instance``'s tree (its root is ``UploadsDir``)."""
    if entry is state.uploads.roots.get(instance):
        return UploadsDir(instance)
    state.entries[entry.id] = entry
    if isinstance(entry, DirEntry):
        return UploadDir(instance, entry.id)
    if isinstance(entry, SymlinkEntry):
        return UploadSymlink(instance, entry.id)
    assert isinstance(entry, FileEntry)
    return UploadFile(instance, entry.id)


class _UploadNode(Node):
    """What every node of an upload tree shares: its entry, attributes and the tree's
    rules. Changes below a node that is not a directory are ENOTDIR."""

    __slots__ = ()
    instance: str

    def entry(self, state: MountState) -> Entry:
        """The node's entry; ``NodeError(ENOENT)`` once it is gone."""
        raise NotImplementedError

    def directory(self, state: MountState) -> DirEntry:
        """The entry as a directory to change; a file or symlink is ENOTDIR."""
        self.entry(state)
        raise NodeError(errno.ENOTDIR)

    def attributes(self, state: MountState) -> Attributes:
        entry = self.entry(state)
        attrs = self._attributes(state, entry)
        attrs.mtime_ns = entry.mtime_ns
        return attrs

    def _attributes(self, state: MountState, entry: Entry) -> Attributes:
        raise NotImplementedError

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        self.entry(state)
        raise NodeError(errno.ENOTDIR)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        self.entry(state)
        raise NodeError(errno.EISDIR)

    def readlink(self, state: MountState) -> str:
        self.entry(state)
        raise NodeError(errno.EINVAL)

    async def setattr(self, state: MountState, changes: SetAttributes) -> None:
        """Truncate and chmod files, set mtimes; everything is journaled."""
        entry = self.entry(state)
        state.writable()
        uploads = state.uploads
        if changes.size is not None:
            if not isinstance(entry, FileEntry):
                raise NodeError(errno.EISDIR)
            await uploads.truncate(entry, changes.size)
        if changes.mode is not None and isinstance(entry, FileEntry):
            entry.mode = stat.S_IMODE(changes.mode)  # committed files show it read-only
            entry.invalidate()  # the executable bit is part of the Directory digest
            uploads.spool.record(entry)
        if changes.mtime_ns is not None:
            entry.mtime_ns = changes.mtime_ns
            if isinstance(entry, FileEntry) and entry.spool is not None:
                # A pending file comes back after a remount with its spool file's mtime.
                os.utime(entry.spool, ns=(entry.mtime_ns, entry.mtime_ns))
        uploads.saved(entry)

    # -- changes of the tree ------------------------------------------------------------

    async def create(
        self, state: MountState, name: bytes, mode: int, flags: int
    ) -> tuple[Opened, Node]:
        state.writable()
        text = new_name(name)
        directory = self.directory(state)
        uploads = state.uploads
        while await uploads.wait_for_commits(directory.children.get(text)):
            pass  # a file it replaces is being committed; then look again
        entry = uploads.new_file(self.instance, directory, text, mode, None)
        opened = await open_upload(state, entry, flags, created=True)
        return opened, upload_node(state, self.instance, entry)

    def _add(self, state: MountState, name: bytes, entry: DirEntry | SymlinkEntry) -> Node:
        """Put a new directory or symlink in this directory (EEXIST if taken)."""
        parent = self.directory(state)
        state.writable()
        entry.name, entry.parent = new_name(name), parent
        if entry.name in parent.children:
            raise NodeError(errno.EEXIST)
        parent.children[entry.name] = entry
        entry.modified()
        state.uploads.saved(entry)
        return upload_node(state, self.instance, entry)

    async def mkdir(self, state: MountState, name: bytes, mode: int) -> Node:
        return self._add(state, name, DirEntry(name="", parent=None))

    async def symlink(self, state: MountState, name: bytes, target: str) -> Node:
        return self._add(state, name, SymlinkEntry(name="", parent=None, target=target))

    def _child_to_remove(self, state: MountState, name: bytes) -> Entry:
        parent = self.directory(state)
        state.writable()
        entry = parent.children.get(os.fsdecode(name))
        if entry is None:
            raise NodeError(errno.ENOENT)
        return entry

    async def unlink(self, state: MountState, name: bytes) -> None:
        entry = self._child_to_remove(state, name)
        while await state.uploads.wait_for_commits(entry):  # then look again: no checkpoint
            entry = self._child_to_remove(state, name)
        if isinstance(entry, DirEntry):
            raise NodeError(errno.EISDIR)
        state.uploads.remove(entry)

    async def rmdir(self, state: MountState, name: bytes) -> None:
        entry = self._child_to_remove(state, name)
        if not isinstance(entry, DirEntry):
            raise NodeError(errno.ENOTDIR)
        if entry.children:
            raise NodeError(errno.ENOTEMPTY)
        state.uploads.remove(entry)

    async def rename(
        self, state: MountState, name: bytes, new_parent: Node, new_name_: bytes, flags: int
    ) -> None:
        """Move within one instance's uploads/ tree (POSIX replace rules). A file being
        committed, moved or replaced, is moved once its commit is done."""
        old_parent = self.directory(state)
        if not isinstance(new_parent, _UploadNode):
            raise state.refused()
        target_parent = new_parent.directory(state)
        state.writable()
        if self.instance != new_parent.instance:
            raise NodeError(errno.EXDEV)
        if flags & RENAME_EXCHANGE:
            raise NodeError(errno.EINVAL)
        old_name, to_name = os.fsdecode(name), new_name(new_name_)
        await _move(state, old_parent, old_name, target_parent, to_name, flags)

    # -- extended attributes ------------------------------------------------------------

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        self.entry(state)
        return {}


async def _move(
    state: MountState,
    old_parent: DirEntry,
    old_name: str,
    new_parent: DirEntry,
    new_name_: str,
    flags: int,
) -> None:
    """The move of a rename, once both directories are known to be in one tree."""
    uploads = state.uploads
    while await uploads.wait_for_commits(  # then look again: no checkpoint after
        old_parent.children.get(old_name), new_parent.children.get(new_name_)
    ):
        pass
    entry = old_parent.children.get(old_name)
    if entry is None:
        raise NodeError(errno.ENOENT)
    if isinstance(entry, FileEntry):
        uploads.check_idle(entry)
    ancestor: DirEntry | None = new_parent
    while ancestor is not None:  # no moving a directory into itself
        if ancestor is entry:
            raise NodeError(errno.EINVAL)
        ancestor = ancestor.parent
    target = new_parent.children.get(new_name_)
    if target is entry:
        return
    if target is not None:
        if flags & RENAME_NOREPLACE:
            raise NodeError(errno.EEXIST)
        if isinstance(target, DirEntry):
            if not isinstance(entry, DirEntry):
                raise NodeError(errno.EISDIR)
            if target.children:
                raise NodeError(errno.ENOTEMPTY)
        elif isinstance(entry, DirEntry):
            raise NodeError(errno.ENOTDIR)
        uploads.remove(target)
    del old_parent.children[old_name]
    old_parent.modified()
    entry.name, entry.parent = new_name_, new_parent
    new_parent.children[new_name_] = entry
    new_parent.modified()
    uploads.moved(entry, old_parent, old_name)


class _UploadDirectory(_UploadNode):
    """A directory of an upload tree: its root or one below."""

    __slots__ = ()

    def directory(self, state: MountState) -> DirEntry:
        entry = self.entry(state)
        assert isinstance(entry, DirEntry)
        return entry

    def _attributes(self, state: MountState, entry: Entry) -> Attributes:
        mode = 0o555 if state.read_only else 0o755
        return Attributes.directory(mode, timeout=UPLOAD_TIMEOUT)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        child = self.directory(state).children.get(name)
        if child is None:
            raise NodeError(errno.ENOENT)
        return upload_node(state, self.instance, child)

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        return [
            (name, upload_node(state, self.instance, child))
            for name, child in sorted(self.directory(state).children.items())
        ]

    async def getxattr(self, state: MountState, name: bytes, caller: Caller) -> bytes:
        """The Directory digest (uploading the tree): only ``user.casfs.*`` names ask for
        it, and only a caller who may read every file below gets it (``audience.py``)."""
        directory = self.directory(state)
        if not name.startswith(b"user.casfs."):
            raise NodeError(NO_ATTRIBUTE)  # do not upload a tree for other names
        if not state.audience.may_read_tree(caller.uid, caller.gid, directory):
            raise NodeError(errno.EACCES)  # its Directory names the files' blobs
        return await super().getxattr(state, name, caller)

    async def listxattr(self, state: MountState) -> list[bytes]:
        self.directory(state)
        return directory_xattr_names(state, self.instance)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        digest = await state.uploads.directory_digest(self.directory(state), self.instance)
        if state.trees is not None:  # ``ls trees/`` shows it
            state.trees.trees_seen.note(self.instance, digest)
        return directory_xattrs(state, self.instance, digest)


@dataclass(frozen=True, slots=True)
class UploadsDir(_UploadDirectory):
    """``<instance>/uploads/``: writable; files become blobs when closed."""

    instance: str
    pinned = True

    def entry(self, state: MountState) -> Entry:
        return state.uploads.roots[self.instance]


class _ById(_UploadNode):
    """A node below ``uploads/``, named by its entry's id (``MountState.entries``)."""

    __slots__ = ()
    id: int

    def entry(self, state: MountState) -> Entry:
        entry = state.entries.get(self.id)
        if entry is None:
            raise NodeError(errno.ENOENT)
        return entry


@dataclass(frozen=True, slots=True)
class UploadDir(_ById, _UploadDirectory):
    """A directory below ``uploads/``."""

    instance: str
    id: int


@dataclass(frozen=True, slots=True)
class UploadSymlink(_ById):
    """A symlink below ``uploads/``."""

    instance: str
    id: int

    def _attributes(self, state: MountState, entry: Entry) -> Attributes:
        assert isinstance(entry, SymlinkEntry)
        size = len(os.fsencode(entry.target))
        return Attributes(mode=stat.S_IFLNK | 0o777, size=size, timeout=UPLOAD_TIMEOUT)

    def readlink(self, state: MountState) -> str:
        entry = self.entry(state)
        assert isinstance(entry, SymlinkEntry)
        return entry.target


@dataclass(frozen=True, slots=True)
class UploadFile(_ById):
    """A file below ``uploads/`` or a direct write of ``blobs/<hash>/<size>``: pending
    until a close commits it, then a read-only blob (keeping its executable bits)."""

    instance: str
    id: int

    def _file(self, state: MountState) -> FileEntry:
        entry = self.entry(state)
        assert isinstance(entry, FileEntry)
        return entry

    def _attributes(self, state: MountState, entry: Entry) -> Attributes:
        assert isinstance(entry, FileEntry)
        # Committed files are blobs now: read-only, keeping their executable bits.
        mode = entry.mode & 0o555 if entry.committed else entry.mode
        # A pending file's size and mode change until it is committed.
        timeout = UPLOAD_TIMEOUT if entry.committed else 0
        return Attributes(mode=stat.S_IFREG | mode, size=entry.size, timeout=timeout)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        entry = self._file(state)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            state.writable()
        return await open_upload(state, entry, flags)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        entry = self._file(state)
        values = upload_xattrs(entry)  # its asset name and qualifiers, if set
        if not entry.committed or entry.digest is None:
            return values
        return blobio.blob_xattrs(self.instance, entry.digest) | values

    async def setxattr(self, state: MountState, name: bytes, value: bytes) -> None:
        entry = self._file(state)
        state.writable()
        await set_upload_xattr(state, entry, name, value)

    async def removexattr(self, state: MountState, name: bytes) -> None:
        entry = self._file(state)
        state.writable()
        await set_upload_xattr(state, entry, name, None)
