"""``<instance>/trees/`` of a mount of a tvix castore: ``trees/blake3/<hash>/`` is the tvix
Directory whose blake3 hash is ``<hash>``, as a read-only tree.

tvix names a Directory by its hash alone (DirectoryService.Get takes nothing else), so the
hash names the tree: no ``<size>/`` below it as in REAPI's ``trees/<hash>/<size>/``. The
``size`` a tvix DirectoryNode carries is the count of entries below the Directory, not the
byte size of anything, so it could not name a blob; it is shown as
``user.casfs.tvix_size``. The tree itself is the REAPI tree's nodes (``treenodes.py``)
over the checked model that ``trees/tvixsource.py`` makes of tvix Directories: only the
directories' attributes differ (``TvixTreeDir``). Files read through the block cache as
``blobs/blake3/`` does.

Looking a hash up fetches its Directory (missing: ENOENT; bad: EIO, logged once) and
starts the subtree's prefetch (one recursive Get); ``ls trees/blake3/`` lists the hashes
this mount has seen (looked up, or a directory's digest that ``uploads/`` computed).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import casfs.fs.nodes.blobio as blobio
from casfs.cas.errors import CasError
from casfs.digest import Digest, DigestFunction
from casfs.fs.catalog import Catalog
from casfs.fs.namespace import join
from casfs.fs.nodes.base import Caller, Node
from casfs.fs.nodes.blobio import XATTR_DIGEST, XATTR_FUNCTION
from casfs.fs.nodes.digestdirs import TREES, DigestsDir, Kind
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.hashdirs import HashesDir, StaticDir
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.treenodes import Origin, TreeDir, view
from casfs.trees import model
from casfs.trees.tvixsource import TvixTreeSource

BLAKE3 = DigestFunction.BLAKE3
XATTR_TVIX_SIZE = b"user.casfs.tvix_size"


def trees_dir(state: MountState, instance: str) -> Node:
    """The ``trees/`` of an instance: tvix's, named by hash, where its Directories come
    from a tvix castore; REAPI's otherwise."""
    if _tvix(state, instance):
        return TvixTreesDir(instance)
    return DigestsDir(Kind.TREES, instance)


def _tvix(state: MountState, instance: str) -> bool:
    return state.trees is not None and isinstance(state.trees.sources.get(instance), TvixTreeSource)


def tvix_xattrs(digest: Digest) -> dict[bytes, bytes]:
    """The attributes of a tvix Directory: its hash (what ``trees/blake3/`` takes), its
    function, and the size a DirectoryNode naming it carries (entries below it)."""
    return {
        XATTR_DIGEST: digest.hash.encode(),
        XATTR_FUNCTION: digest.function.name_lower.encode(),
        XATTR_TVIX_SIZE: str(digest.size).encode(),
    }


def directory_xattrs(state: MountState, instance: str, digest: Digest) -> dict[bytes, bytes]:
    """The attributes of a directory of ``uploads/`` whose Directory has ``digest``."""
    if _tvix(state, instance):
        return tvix_xattrs(digest)
    return blobio.blob_xattrs(instance, digest)


def directory_xattr_names(state: MountState, instance: str) -> list[bytes]:
    """Their names, known before the digest is."""
    return (
        [XATTR_DIGEST, XATTR_FUNCTION, XATTR_TVIX_SIZE]
        if _tvix(state, instance)
        else list(blobio.BLOB_XATTRS)
    )


def _place(instance: str, hash_: str) -> str:
    return f"{join(instance, TREES)}/{BLAKE3.name_lower}/{hash_}"


@dataclass(frozen=True, slots=True)
class TvixTreesDir(StaticDir):
    """``<instance>/trees/`` over a tvix castore: ``blake3/`` alone."""

    instance: str
    pinned = True

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        return [(BLAKE3.name_lower, TvixTreeHashes(self.instance))]


@dataclass(frozen=True, slots=True)
class TvixTreeHashes(HashesDir):
    """``<instance>/trees/blake3/``: a hash is the tree of the Directory it names."""

    instance: str
    pinned = True

    def function_of_names(self) -> DigestFunction | None:
        return BLAKE3

    def seen(self, state: MountState) -> Catalog:
        return view(state).trees_seen

    def hash_node(self, state: MountState, hash_: str, function: DigestFunction) -> Node:
        """The tree of a hash seen (for listings): its size is the one seen."""
        sizes = self.seen(state).sizes(self.instance, function, hash_)
        digest = Digest(hash_, sizes[0] if sizes else 0, function)
        return TvixTreeDir(Origin(self.instance), _place(self.instance, hash_), digest)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """The tree whose root Directory has the hash ``name``, once fetched (ENOENT if
        missing or not a blake3 hash, EIO if bad); its subtree is fetched ahead."""
        if state.namespace.hash_function(name, BLAKE3) is None:
            raise NodeError(errno.ENOENT)
        trees = view(state)
        source = trees.sources.get(self.instance)
        if not isinstance(source, TvixTreeSource):  # pragma: no cover - trees_dir decides
            raise NodeError(errno.ENOENT)
        try:
            root = await source.by_hash(name)
        except CasError as error:
            raise trees.refused(Digest(name, 0, BLAKE3), error) from None
        origin = Origin(self.instance)
        trees.walk_started(origin, root.digest)
        trees.trees_seen.note(self.instance, root.digest)
        state.audience.named(caller.uid, self.instance, root.digest)
        return TvixTreeDir(origin, _place(self.instance, name), root.digest)


@dataclass(frozen=True, slots=True)
class TvixTreeDir(TreeDir):
    """A directory of a tvix tree: a ``TreeDir`` whose digest is tvix's (hash, and the
    entries below it as ``size``), so its attributes say so instead of naming a blob."""

    def _child(self, state: MountState, entry: model.Node) -> Node:
        child = TreeDir._child(self, state, entry)
        if type(child) is TreeDir:
            return TvixTreeDir(child.origin, child.place, child.digest, child.depth)
        return child

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return tvix_xattrs(self.digest)
