"""The read-only directories: instance directories (and the root, which names ``trees/``
and ``actions/`` too when the mount has a tree view), ``blobs/``, a digest function's
directory and a hash directory. Their children come from the namespace's rules
and, for blobs, from what the catalog has seen (filtered by ``audience.py``).

A new top-level directory of an instance (``trees/``, ``actions/``, ...) is one more node
class, and one more entry in ``InstanceDir.static_children``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from casfs.digest import DigestFunction
from casfs.fs.catalog import Catalog
from casfs.fs.namespace import BLOBS, UPLOADS, join
from casfs.fs.nodes.assets import ASSETS, AssetsDir
from casfs.fs.nodes.base import Attributes, Caller, Node, Opened, new_name
from casfs.fs.nodes.blobfile import BlobFile
from casfs.fs.nodes.digestdirs import ACTIONS, TREES, DigestsDir, Kind
from casfs.fs.nodes.errors import NO_ATTRIBUTE, NodeError
from casfs.fs.nodes.hashdirs import HashesDir, StaticDir
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.tvixtrees import trees_dir
from casfs.fs.nodes.uploadfiles import open_upload
from casfs.fs.nodes.uploadtree import UploadsDir, upload_node
from casfs.fs.status import STATUS_XATTR

XATTR_STATUS = STATUS_XATTR.encode()  # on the mount's root: see casfs/fs/status.py


@dataclass(frozen=True, slots=True)
class InstanceDir(StaticDir):
    """The root (``path == ""``) or a directory on the way to or at an instance name.
    The root also carries the mount's status attribute (``fs/status.py``)."""

    path: str
    pinned = True

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        names = state.namespace
        entries: list[tuple[str, Node]] = [
            (name, InstanceDir(join(self.path, name))) for name in names.subdirectories(self.path)
        ]
        if names.is_instance(self.path):
            entries.append((BLOBS, BlobsDir(self.path)))
            entries.append((UPLOADS, UploadsDir(self.path)))
            # assets/ when the remote has asset clients (a tvix remote has none); an
            # instance's name wins over it.
            if state.assets.clients and ASSETS not in names.subdirectories(self.path):
                entries.append((ASSETS, AssetsDir(self.path)))
            if state.trees is not None:  # "trees" may name an instance too: it wins
                if TREES not in names.subdirectories(self.path):
                    entries.append((TREES, trees_dir(state, self.path)))
                if self.path in state.trees.reapi:  # REAPI's ActionCache (tvix has none)
                    entries.append((ACTIONS, DigestsDir(Kind.ACTIONS, self.path)))
        return entries

    async def getxattr(self, state: MountState, name: bytes, caller: Caller) -> bytes:
        if self.path == "" and name == XATTR_STATUS:
            return state.status()
        raise NodeError(NO_ATTRIBUTE)

    async def listxattr(self, state: MountState) -> list[bytes]:
        return [XATTR_STATUS] if self.path == "" else []


ROOT = InstanceDir("")


@dataclass(frozen=True, slots=True)
class BlobsDir(HashesDir):
    """``<instance>/blobs/``."""

    instance: str
    pinned = True

    def function_of_names(self) -> DigestFunction | None:
        return None

    def seen(self, state: MountState) -> Catalog:
        return state.catalog

    def hash_node(self, state: MountState, hash_: str, function: DigestFunction) -> Node:
        return HashDir(self.instance, function, hash_)

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        return [
            (f.name_lower, FunctionDir(self.instance, f)) for f in state.namespace.named_functions()
        ]


@dataclass(frozen=True, slots=True)
class FunctionDir(BlobsDir):
    """``<instance>/blobs/<fn>/`` for a function named in resource names (blake3, ...)."""

    instance: str
    function: DigestFunction
    pinned = True

    def function_of_names(self) -> DigestFunction | None:
        return self.function

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        return []


@dataclass(frozen=True, slots=True)
class HashDir(Node):
    """``<instance>/blobs/[<fn>/]<hash>/``: lists the sizes seen for the hash; a name in
    it exists if the server has the blob. Creating one is a direct write of the blob."""

    instance: str
    function: DigestFunction
    hash: str

    def attributes(self, state: MountState) -> Attributes:
        return Attributes.directory()

    def _blob(self, state: MountState, name: str) -> BlobFile | None:
        digest = state.namespace.blob_digest(self.hash, self.function, name)
        return BlobFile(self.instance, digest) if digest is not None else None

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """A blob file, if the server has the blob (asked once: ``BlobFile.exists``)."""
        blob = self._blob(state, name)
        if blob is None or not await blob.exists(state):
            raise NodeError(errno.ENOENT)
        state.audience.named(caller.uid, self.instance, blob.digest)
        return blob

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        visible = state.audience.visible(caller.uid, caller.gid, self.instance, [self.hash])
        if not any(visible):
            return []
        entries: list[tuple[str, Node]] = []
        for size in state.catalog.sizes(self.instance, self.function, self.hash):
            blob = self._blob(state, str(size))
            if blob is not None:
                entries.append((str(size), blob))
        return entries

    async def create(
        self, state: MountState, name: bytes, mode: int, flags: int
    ) -> tuple[Opened, Node]:
        """A direct write of ``blobs/<hash>/<size>``: verified against its name on close."""
        state.writable()
        text = new_name(name)
        blob = self._blob(state, text)
        if blob is None:
            raise NodeError(errno.EINVAL)
        entry = state.uploads.new_file(self.instance, None, text, mode, blob.digest)
        opened = await open_upload(state, entry, flags, created=True)
        return opened, upload_node(state, self.instance, entry)
