"""``<instance>/assets/``: Remote Asset names (URIs) of blobs as paths, their qualifiers as
extended attributes. What is shown and why is ``fs/assetcatalog.py``'s; how a URI is cut
into names ``fs/assetpaths.py``'s. The open files are ``assetfiles.py``'s.

    assets/                         the scheme directories known (``https``, ``urn:``)
      https/<host>/.../<name>       an asset: the blob, read through the block cache
      https/<host>/.../<tree>/      a directory asset: an empty directory
                                    (``user.casfs.digest`` is its root Directory's)

An asset's attributes: ``user.casfs.digest``, ``user.casfs.digest_function``,
``user.casfs.resource_name`` as for any blob, ``user.casfs.uri``, and one
``user.casfs.qualifier.<name>`` per qualifier. Setting or removing a qualifier pushes
the asset again with it; on a file being written it is kept for the push at its close
(once a close committed it, pushed at once). A file written anew over an asset has two
inodes in the kernel (the asset's, which O_TRUNC opened, and the file's, which a later
lookup finds): while it is written, both are that file.
``mkdir`` makes a directory in this mount's view only (nothing is sent): a way to reach
deeper names on a server that cannot list them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import casfs.fs.nodes.blobio as blobio
from casfs.assetnames import CHECKSUM_SRI
from casfs.fs.assetcatalog import ANSWER_TTL
from casfs.fs.assetindex import Record
from casfs.fs.assetpaths import AssetPrefix, scheme_prefix
from casfs.fs.nodes.assetfiles import open_asset_read, open_asset_write
from casfs.fs.nodes.assetpush import (
    XATTR_URI,
    changed_qualifiers,
    push,
    push_committed,
    qualifier_xattrs,
    resolve,
)
from casfs.fs.nodes.base import Attributes, Caller, Node, Opened, new_name
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.fs.uploadentries import FileEntry

ASSETS = "assets"


def _directory(state: MountState) -> Attributes:
    return Attributes.directory(0o555 if state.read_only else 0o755, timeout=ANSWER_TTL)


def _available(state: MountState) -> None:
    """A listing against a remote known to lack the API says so (ENOTSUP)."""
    if state.assets.unavailable is not None:
        raise NodeError(errno.ENOTSUP)


def asset_node(instance: str, record: Record) -> Node:
    if record.directory:
        return AssetTree(instance, record.uri)
    return AssetFile(instance, record.uri)


@dataclass(frozen=True, slots=True)
class AssetsDir(Node):
    """``<instance>/assets/``: a directory per URI scheme."""

    instance: str
    pinned = True

    def attributes(self, state: MountState) -> Attributes:
        return _directory(state)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        prefix = scheme_prefix(name)
        if prefix is None:
            raise NodeError(errno.ENOENT)
        return AssetDir(self.instance, prefix.text)

    async def listing(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        _available(state)
        entries: list[tuple[str, Node]] = []
        for name in await state.assets.schemes(self.instance):
            prefix = scheme_prefix(name)
            if prefix is not None:
                entries.append((name, AssetDir(self.instance, prefix.text)))
        return entries

    async def mkdir(self, state: MountState, name: bytes, mode: int) -> Node:
        state.writable()
        prefix = scheme_prefix(new_name(name))
        if prefix is None:
            raise NodeError(errno.EINVAL)
        state.assets.make(self.instance, prefix)
        return AssetDir(self.instance, prefix.text)


@dataclass(frozen=True, slots=True)
class AssetDir(Node):
    """A directory below ``assets/``: the URIs that start with ``prefix``."""

    instance: str
    prefix: str

    def attributes(self, state: MountState) -> Attributes:
        return _directory(state)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """A file being written here; a directory (known, or the host level of a
        ``scheme://``); else what Fetch answers for the URI; else ENOENT."""
        uri = AssetPrefix(self.prefix).child_uri(name)
        if uri is None:
            raise NodeError(errno.ENOENT)
        pending = _pending(state, self.instance, uri)
        if pending is not None:
            return AssetUpload(self.instance, uri, pending.id)
        child = AssetPrefix(uri + "/")
        if self.prefix.endswith("://") or await state.assets.is_directory(self.instance, child):
            return AssetDir(self.instance, child.text)
        record = await resolve(state, self.instance, uri)
        pending = _pending(state, self.instance, uri)  # looked up again after the wait
        if pending is not None:
            return AssetUpload(self.instance, uri, pending.id)
        if record is None:
            raise NodeError(errno.ENOENT)
        return asset_node(self.instance, record)

    async def listing(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        _available(state)
        prefix = AssetPrefix(self.prefix)
        entries: list[tuple[str, Node]] = []
        children = await state.assets.children(self.instance, prefix)
        for name, record in sorted(children.items()):
            if record is not None:
                entries.append((name, asset_node(self.instance, record)))
            elif (child := prefix.child(name)) is not None:
                entries.append((name, AssetDir(self.instance, child.text)))
        return entries

    async def mkdir(self, state: MountState, name: bytes, mode: int) -> Node:
        state.writable()
        child = AssetPrefix(self.prefix).child(new_name(name))
        if child is None:
            raise NodeError(errno.EINVAL)
        state.assets.make(self.instance, child)
        return AssetDir(self.instance, child.text)

    async def create(
        self, state: MountState, name: bytes, mode: int, flags: int
    ) -> tuple[Opened, Node]:
        """A new asset: uploaded at close, then pushed under its URI."""
        state.writable()
        uri = AssetPrefix(self.prefix).child_uri(new_name(name))
        if uri is None:
            raise NodeError(errno.EINVAL)
        opened, entry = await open_asset_write(state, self.instance, uri, mode, flags, {})
        return opened, AssetUpload(self.instance, uri, entry.id)


def _pending(state: MountState, instance: str, uri: str) -> FileEntry | None:
    """The file being written to ``uri`` by this mount, if any."""
    entry_id = state.assets.pending.get((instance, uri))
    entry = state.entries.get(entry_id) if entry_id is not None else None
    if not isinstance(entry, FileEntry) or entry.unlinked:
        return None
    return entry


class _Asset(Node):
    """What an asset file and a directory asset share: their record and attributes."""

    __slots__ = ()
    instance: str
    uri: str

    def record(self, state: MountState) -> Record:
        record = state.assets.record(self.instance, self.uri)
        if record is None:
            raise NodeError(errno.ENOENT)
        return record

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        record = self.record(state)
        values = blobio.blob_xattrs(self.instance, record.digest)
        values[XATTR_URI] = self.uri.encode()
        values.update(qualifier_xattrs(dict(record.qualifiers)))
        return values

    async def setxattr(self, state: MountState, name: bytes, value: bytes) -> None:
        await self._repush(state, name, value)

    async def removexattr(self, state: MountState, name: bytes) -> None:
        await self._repush(state, name, None)

    async def _repush(self, state: MountState, name: bytes, value: bytes | None) -> None:
        """Push the asset again with a qualifier set or removed: one change of this
        asset at a time (``MountAssets.changing``), each on the set the last one pushed.
        Cancelled, the push may or may not have happened; the lock is given back."""
        state.writable()
        async with state.assets.changing(self.instance, self.uri):
            record = self.record(state)  # after the wait: what the last change pushed
            if record.directory:
                raise NodeError(errno.ENOTSUP)  # the mount pushes blobs only
            qualifiers = changed_qualifiers(dict(record.qualifiers), name, value)
            await push(state, self.instance, self.uri, record.digest, qualifiers)


@dataclass(frozen=True, slots=True)
class AssetFile(_Asset):
    """An asset naming a blob: the blob, read-only (its name may be written anew).

    While this mount writes its name anew, it is the file being written (``AssetUpload``)
    for every request: the kernel keeps this node's inode for the path it opened with
    O_TRUNC until its entry expires, and a lookup then finds the file being written, so
    both inodes must answer alike (the same qualifiers, the same bounds, no push before
    the close)."""

    instance: str
    uri: str

    def _writing(self, state: MountState) -> AssetUpload | None:
        entry = _pending(state, self.instance, self.uri)
        return None if entry is None else AssetUpload(self.instance, self.uri, entry.id)

    def attributes(self, state: MountState) -> Attributes:
        if (writing := self._writing(state)) is not None:
            return writing.attributes(state)
        mode = 0o444 if state.read_only else 0o644
        size = self.record(state).digest.size
        return Attributes(mode=stat.S_IFREG | mode, size=size, timeout=ANSWER_TTL)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        if (writing := self._writing(state)) is not None:
            return await writing.xattrs(state)
        return await _Asset.xattrs(self, state)

    async def setxattr(self, state: MountState, name: bytes, value: bytes) -> None:
        if (writing := self._writing(state)) is not None:
            return await writing.setxattr(state, name, value)
        await self._repush(state, name, value)

    async def removexattr(self, state: MountState, name: bytes) -> None:
        if (writing := self._writing(state)) is not None:
            return await writing.removexattr(state, name)
        await self._repush(state, name, None)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        if (writing := self._writing(state)) is not None:
            return await writing.open(state, inode, flags)  # another open of that file
        record = self.record(state)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return open_asset_read(self.instance, record.digest)
        state.writable()
        if not flags & os.O_TRUNC:
            raise NodeError(errno.EACCES)  # casfs keeps no copy of a blob to change
        # The asset's qualifiers but its checksum.sri, the old content's: the push at the
        # close adds the new content's (and the bounds count it while the file is written).
        qualifiers = {n: v for n, v in record.qualifiers.items() if n != CHECKSUM_SRI}
        opened, _ = await open_asset_write(state, self.instance, self.uri, 0o644, flags, qualifiers)
        return opened


@dataclass(frozen=True, slots=True)
class AssetTree(_Asset):
    """An asset naming a tree: an empty directory carrying the root Directory's digest."""

    instance: str
    uri: str

    def attributes(self, state: MountState) -> Attributes:
        self.record(state)
        return Attributes.directory(timeout=ANSWER_TTL)

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        self.record(state)
        return []


@dataclass(frozen=True, slots=True)
class AssetUpload(Node):
    """A file of ``assets/`` being written by this mount: pushed at its close."""

    instance: str
    uri: str
    id: int

    def _entry(self, state: MountState) -> FileEntry:
        entry = state.entries.get(self.id)
        if not isinstance(entry, FileEntry) or entry.unlinked:
            raise NodeError(errno.ENOENT)
        return entry

    def attributes(self, state: MountState) -> Attributes:
        entry = self._entry(state)
        attrs = Attributes(mode=stat.S_IFREG | entry.mode, size=entry.size, timeout=0)
        attrs.mtime_ns = entry.mtime_ns
        return attrs

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        entry = self._entry(state)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            state.writable()
        opened, _ = await open_asset_write(state, self.instance, self.uri, 0, flags, None, entry)
        return opened

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        entry = self._entry(state)
        values = {XATTR_URI: self.uri.encode(), **qualifier_xattrs(entry.qualifiers)}
        if entry.digest is not None:
            values.update(blobio.blob_xattrs(self.instance, entry.digest))
        return values

    async def setxattr(self, state: MountState, name: bytes, value: bytes) -> None:
        await self._requalify(state, name, value)

    async def removexattr(self, state: MountState, name: bytes) -> None:
        await self._requalify(state, name, None)

    async def _requalify(self, state: MountState, name: bytes, value: bytes | None) -> None:
        """Set or remove a qualifier of the file, for the push at its close; a file
        committed already (closed, its last descriptor not yet released) is pushed again
        at once, as the committed asset would be. A failed push fails the call, and the
        next close pushes again."""
        entry = self._entry(state)
        state.writable()
        checksum = entry.function  # the push adds its checksum.sri: counted already
        entry.qualifiers = changed_qualifiers(entry.qualifiers, name, value, checksum=checksum)
        await push_committed(state, entry)
