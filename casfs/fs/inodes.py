"""The inode table: node <-> inode number, and the kernel's lookup counts. No I/O.

Static directories (the root, instance directories, ``blobs/``, ``uploads/``) are pinned
and never forgotten. Other nodes get an inode on first lookup and lose it when the kernel forgets
them (their lookup count drops to zero); a later lookup may give a new number, which is
fine for immutable content.
"""

from __future__ import annotations

import itertools

from casfs.fs.nodes.base import Node

ROOT_INODE = 1  # FUSE_ROOT_ID, pyfuse3.ROOT_INODE


class InodeTable:
    """Thread-unsafe by design: all FUSE handlers run in one trio thread. Nodes are keyed
    by value (they are frozen dataclasses): two equal nodes have one inode."""

    def __init__(self, root: Node) -> None:
        self._by_node: dict[Node, int] = {root: ROOT_INODE}
        self._by_inode: dict[int, Node] = {ROOT_INODE: root}
        self._lookups: dict[int, int] = {}
        self._pinned: set[int] = {ROOT_INODE}
        self._next = itertools.count(ROOT_INODE + 1)

    def __len__(self) -> int:
        return len(self._by_inode)

    def inode(self, node: Node, *, pin: bool = False) -> int:
        """The inode of ``node``, allocated if it has none; lookup counts are unchanged."""
        inode = self._by_node.get(node)
        if inode is None:
            inode = next(self._next)
            self._by_node[node] = inode
            self._by_inode[inode] = node
        if pin:
            self._pinned.add(inode)
        return inode

    def lookup(self, node: Node) -> int:
        """The inode of ``node``, with its lookup count raised by one (the kernel knows it)."""
        inode = self.inode(node)
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        return inode

    def node(self, inode: int) -> Node:
        """The node behind ``inode``. Raises ``KeyError`` for an unknown inode."""
        return self._by_inode[inode]

    def forget(self, inode: int, count: int) -> bool:
        """Lower the lookup count; drop the inode when it reaches zero (unless pinned).
        Whether the kernel no longer knows the inode (its count reached zero)."""
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return False
        self._lookups.pop(inode, None)
        if inode not in self._pinned:
            node = self._by_inode.pop(inode, None)
            if node is not None:
                del self._by_node[node]
        return True
