"""``<instance>/trees/`` and ``<instance>/actions/``: directories of digests, as ``blobs/``
is. ``trees/[<fn>/]<hash>/<size>/`` is a Directory's tree (``treenodes.TreeDir``),
``actions/[<fn>/]<hash>/<size>/`` an ActionCache entry (``actions.ActionDir``).

Any well-formed digest may be looked up; what exists is decided then (a missing
Directory or an Action with no entry is ENOENT, a bad one EIO: ``fs/treeview.py``).
A listing shows the digests this mount has seen (looked up here, or a directory's digest
that ``uploads/`` computed), filtered for other users as ``blobs/`` is (``audience.py``).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from casfs.digest import Digest, DigestFunction
from casfs.fs.catalog import Catalog
from casfs.fs.namespace import join
from casfs.fs.nodes.actions import ActionDir
from casfs.fs.nodes.base import Attributes, Caller, Node
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.hashdirs import HashesDir
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.treenodes import Origin, TreeDir, view

if TYPE_CHECKING:
    from casfs.fs.treeview import TreeView

TREES = "trees"
ACTIONS = "actions"


class Kind(enum.Enum):
    """What a digest names here."""

    TREES = TREES
    ACTIONS = ACTIONS

    def seen(self, trees: TreeView) -> Catalog:
        return trees.trees_seen if self is Kind.TREES else trees.actions_seen


def _place(kind: Kind, instance: str, digest: Digest) -> str:
    return f"{join(instance, kind.value)}/{digest.function.name_lower}/{digest}"


async def _leaf(state: MountState, kind: Kind, instance: str, digest: Digest) -> Node:
    """The node a digest names, once it is known to exist (fetched: ENOENT, EIO)."""
    trees = view(state)
    if kind is Kind.ACTIONS:
        await trees.action(instance, digest)
        node: Node = ActionDir(instance, digest)
    else:
        origin = Origin(instance)
        await trees.directory(origin, digest)
        trees.walk_started(origin, digest)
        node = TreeDir(origin, _place(kind, instance, digest), digest)
    kind.seen(trees).note(instance, digest)
    return node


class _DigestsDir(HashesDir):
    """``trees/``, ``actions/`` (the legacy functions' hashes) or their ``<fn>/``."""

    __slots__ = ()
    kind: Kind
    instance: str

    def function_of_names(self) -> DigestFunction | None:
        return None

    def seen(self, state: MountState) -> Catalog:
        return self.kind.seen(view(state))

    def hash_node(self, state: MountState, hash_: str, function: DigestFunction) -> Node:
        return DigestHashDir(self.kind, self.instance, function, hash_)


@dataclass(frozen=True, slots=True)
class DigestsDir(_DigestsDir):
    """``<instance>/trees/`` or ``<instance>/actions/``."""

    kind: Kind
    instance: str
    pinned = True

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        return [
            (f.name_lower, FunctionDigestsDir(self.kind, self.instance, f))
            for f in state.namespace.named_functions()
        ]


@dataclass(frozen=True, slots=True)
class FunctionDigestsDir(_DigestsDir):
    """``<instance>/trees/<fn>/`` or ``<instance>/actions/<fn>/`` (blake3, ...)."""

    kind: Kind
    instance: str
    function: DigestFunction
    pinned = True

    def function_of_names(self) -> DigestFunction | None:
        return self.function


@dataclass(frozen=True, slots=True)
class DigestHashDir(Node):
    """``trees/[<fn>/]<hash>/`` or ``actions/[<fn>/]<hash>/``: the sizes seen; a size
    names a tree or an entry if the remote has it."""

    kind: Kind
    instance: str
    function: DigestFunction
    hash: str

    def attributes(self, state: MountState) -> Attributes:
        return Attributes.directory()

    def _digest(self, state: MountState, name: str) -> Digest | None:
        return state.namespace.blob_digest(self.hash, self.function, name)

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        digest = self._digest(state, name)
        if digest is None:
            raise NodeError(errno.ENOENT)
        node = await _leaf(state, self.kind, self.instance, digest)
        state.audience.named(caller.uid, self.instance, digest)
        return node

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        visible = state.audience.visible(caller.uid, caller.gid, self.instance, [self.hash])
        if not any(visible):
            return []
        entries: list[tuple[str, Node]] = []
        seen = self.kind.seen(view(state))
        for size in seen.sizes(self.instance, self.function, self.hash):
            digest = Digest(self.hash, size, self.function)
            if self.kind is Kind.ACTIONS:
                entries.append((str(size), ActionDir(self.instance, digest)))
            else:
                place = _place(self.kind, self.instance, digest)
                entries.append((str(size), TreeDir(Origin(self.instance), place, digest)))
        return entries
