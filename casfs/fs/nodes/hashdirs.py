"""The shapes every digest directory shares: a directory of fixed children, and a
directory of hashes (``blobs/``, ``trees/``, ``actions/`` and their ``<fn>/``), whose
listing is the hashes a catalog has seen, filtered for the caller (``audience.py``).

A directory of hashes says which catalog it lists (``seen``), which digest function its
names are in (``function_of_names``: None for the legacy functions told apart by length)
and which node a hash is (``hash_dir``); lookups and listings are the same for all.
"""

from __future__ import annotations

import errno

from casfs.digest import DigestFunction
from casfs.fs.catalog import Catalog
from casfs.fs.nodes.base import Attributes, Caller, Node
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState


class StaticDir(Node):
    """A directory whose children are fixed by the namespace."""

    __slots__ = ()

    def attributes(self, state: MountState) -> Attributes:
        return Attributes.directory()

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        for entry, node in self.static_children(state):
            if entry == name:
                return node
        raise NodeError(errno.ENOENT)

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        return self.static_children(state)


class HashesDir(StaticDir):
    """A directory of hashes, beside its fixed children (the ``<fn>/`` directories)."""

    __slots__ = ()
    instance: str

    def function_of_names(self) -> DigestFunction | None:
        raise NotImplementedError

    def seen(self, state: MountState) -> Catalog:
        raise NotImplementedError

    def hash_node(self, state: MountState, hash_: str, function: DigestFunction) -> Node:
        raise NotImplementedError

    def hash_dir(self, state: MountState, name: str) -> Node | None:
        """The node of a well-formed hash of this directory's function; else None."""
        function = state.namespace.hash_function(name, self.function_of_names())
        return self.hash_node(state, name, function) if function is not None else None

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        for entry, node in self.static_children(state):
            if entry == name:
                return node
        found = self.hash_dir(state, name)
        if found is None:
            raise NodeError(errno.ENOENT)
        return found

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        """The hashes seen, as ``caller`` may list them (``audience.py``)."""
        entries = self.static_children(state)
        hashes = self.seen(state).hashes(self.instance, self.function_of_names())
        for hash_ in state.audience.visible(caller.uid, caller.gid, self.instance, hashes):
            node = self.hash_dir(state, hash_)
            if node is not None:
                entries.append((hash_, node))
        return entries
