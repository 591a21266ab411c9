"""``<instance>/actions/<hash>/<size>/``: an ActionCache entry as a read-only directory.

    exit_code, stdout, stderr, result.json   files (``ContentFile``: inline or a blob)
    outputs/<path>                           output files, directories (trees), symlinks
    action/                                  when the Action is in the CAS: command,
                                             action.json, input_root/ (a tree)

What each shows is rendered by ``casfs.trees.actions`` from the entry that
``fs/treeview.py`` fetched and checked (an Action with no entry is ENOENT, an entry or
Tree that is bad EIO). The entry is fetched again when it has left the view's cache.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from casfs.digest import Digest
from casfs.fs.namespace import join
from casfs.fs.nodes.base import BLOB_TIMEOUT, Attributes, Caller, Node
from casfs.fs.nodes.blobio import blob_xattrs
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.treenodes import ContentFile, LinkNode, Origin, TreeDir, view
from casfs.trees import actions
from casfs.trees.actionsource import ActionView
from casfs.trees.model import proto_digest

OUTPUTS = "outputs"
ACTION = "action"


def _place(instance: str, action: Digest, path: str) -> str:
    return f"{join(instance, 'actions')}/{action.function.name_lower}/{action}/{path}"


class _EntryDir(Node):
    """A directory whose children come from an ActionCache entry."""

    __slots__ = ()
    instance: str
    action: Digest

    def attributes(self, state: MountState) -> Attributes:
        return Attributes.directory(timeout=BLOB_TIMEOUT)

    async def _view(self, state: MountState) -> ActionView:
        return await view(state).action(self.instance, self.action)

    def _children(self, state: MountState, entry: ActionView) -> list[tuple[str, Node]]:
        raise NotImplementedError

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """A child; a tree's root Directory is fetched first (ENOENT if missing)."""
        for entry, node in self._children(state, await self._view(state)):
            if entry == name:
                if isinstance(node, TreeDir):
                    await node.directory(state)
                    view(state).walk_started(node.origin, node.digest)
                return node
        raise NodeError(errno.ENOENT)

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        raise NodeError(errno.EIO)  # ``listing`` is asked instead

    async def listing(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        return self._children(state, await self._view(state))

    def _file(self, content: actions.Content, executable: bool = False) -> ContentFile:
        return ContentFile(self.instance, content, self.action.function, executable)


@dataclass(frozen=True, slots=True)
class ActionDir(_EntryDir):
    """``actions/[<fn>/]<hash>/<size>/``."""

    instance: str
    action: Digest

    def _children(self, state: MountState, entry: ActionView) -> list[tuple[str, Node]]:
        result, function = entry.result, self.action.function
        children: list[tuple[str, Node]] = [
            ("exit_code", self._file(actions.Inline(actions.exit_code_text(result)))),
            ("stdout", self._file(actions.stdout(result, function))),
            ("stderr", self._file(actions.stderr(result, function))),
            ("result.json", self._file(actions.Inline(actions.result_json(result)))),
            (OUTPUTS, OutputDir(self.instance, self.action, "")),
        ]
        if entry.action is not None:
            children.append((ACTION, ActionInfoDir(self.instance, self.action)))
        return sorted(children, key=lambda pair: pair[0])

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return blob_xattrs(self.instance, self.action)


@dataclass(frozen=True, slots=True)
class OutputDir(_EntryDir):
    """``outputs/`` or a directory on the way to outputs below it (``path``)."""

    instance: str
    action: Digest
    path: str

    def _children(self, state: MountState, entry: ActionView) -> list[tuple[str, Node]]:
        outputs = entry.outputs()
        here = outputs.get(self.path)
        if not isinstance(here, actions.OutputParent):
            raise NodeError(errno.ENOENT)
        # Output directories given as Tree messages: their Directories come from the Tree.
        tree_of = {}
        for directory in entry.result.output_directories:
            if directory.HasField("tree_digest"):
                tree = proto_digest(directory.tree_digest, self.action.function, "ActionResult")
                if tree in entry.trees:
                    tree_of[directory.path] = tree
        children: list[tuple[str, Node]] = []
        for name in sorted(here.names):
            path = f"{self.path}/{name}" if self.path else name
            node = outputs[path]
            child: Node
            if isinstance(node, actions.OutputParent):
                child = OutputDir(self.instance, self.action, path)
            elif isinstance(node, actions.OutputFile):
                child = self._file(node.content, node.executable)
            elif isinstance(node, actions.OutputSymlink):
                child = LinkNode(node.target)
            else:
                origin = Origin(self.instance, tree_of.get(path))
                place = _place(self.instance, self.action, f"{OUTPUTS}/{path}")
                child = TreeDir(origin, place, node.root)
            children.append((name, child))
        return children


@dataclass(frozen=True, slots=True)
class ActionInfoDir(_EntryDir):
    """``action/``: the Action and its Command, when the CAS has them."""

    instance: str
    action: Digest

    def _children(self, state: MountState, entry: ActionView) -> list[tuple[str, Node]]:
        action = entry.action
        if action is None:
            raise NodeError(errno.ENOENT)
        function = self.action.function
        root = actions.input_root(action, function)
        place = _place(self.instance, self.action, f"{ACTION}/input_root")
        children: list[tuple[str, Node]] = [
            ("action.json", self._file(actions.Inline(actions.action_json(action)))),
            ("input_root", TreeDir(Origin(self.instance), place, root)),
        ]
        if entry.command is not None:
            text = actions.command_text(entry.command, action)
            children.append(("command", self._file(actions.Inline(text))))
        return sorted(children, key=lambda pair: pair[0])
