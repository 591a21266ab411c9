"""An ActionCache entry and what it refers to, fetched and verified for ``actions/``.

``fetch_action`` gathers what the pure renderers of ``actions.py`` need: the ActionResult
(GetActionResult; none is ``NotFound``, ENOENT), the Tree message of each output directory
(verified against its tree digest and checked, ``DataLoss`` or ``BadDirectory`` (EIO)
otherwise), and the Action and its Command when the CAS has them (verified too; a missing
one is simply not shown). Cancellation cancels the call in flight; nothing is cached here
(the caller keeps the ``ActionView``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.errors import NotFound
from casfs.digest import Digest
from casfs.trees import actions
from casfs.trees.model import (
    BadDirectory,
    Directory,
    M,
    parse_message,
    parse_tree,
    proto_digest,
    verify,
)
from casfs.trees.source import TreeSource

TreeParts = tuple[Directory, dict[Digest, Directory]]


@dataclass(slots=True)
class ActionView:
    """Everything ``actions/<hash>/<size>/`` shows, fetched and checked."""

    digest: Digest
    result: re_pb2.ActionResult
    trees: dict[Digest, TreeParts] = field(default_factory=dict)
    action: re_pb2.Action | None = None
    command: re_pb2.Command | None = None

    def outputs(self) -> dict[str, actions.OutputNode]:
        return actions.outputs(
            self.result, self.digest.function, self.trees, f"ActionResult of {self.digest}"
        )


async def _message(source: TreeSource, cls: type[M], digest: Digest, limit: int) -> M:
    if digest.size > limit:
        raise BadDirectory(f"{cls.__name__} {digest}: larger than {limit} bytes")
    data = await source.client.read_blob(digest)
    verify(data, digest, f"{cls.__name__} {digest}")
    return parse_message(cls, data, f"{cls.__name__} {digest}")


async def fetch_tree(source: TreeSource, digest: Digest) -> TreeParts:
    """An output directory's Tree message, verified, checked and parsed; its Directories
    also go into the source's cache."""
    limits = source.limits
    if digest.size > limits.max_tree_bytes:
        raise BadDirectory(f"Tree {digest}: larger than {limits.max_tree_bytes} bytes")
    data = await source.client.read_blob(digest)
    root, children = parse_tree(data, digest, limits)
    for directory in (root, *children.values()):
        source.keep(directory)
    return root, children


async def fetch_action(source: TreeSource, digest: Digest) -> ActionView:
    """The ActionCache entry of the Action ``digest`` and what it refers to."""
    result = await source.calls.get_action_result(digest)
    view = ActionView(digest, result)
    what = f"ActionResult of {digest}"
    for directory in result.output_directories:
        if directory.HasField("tree_digest"):
            tree = proto_digest(directory.tree_digest, digest.function, what)
            view.trees[tree] = await fetch_tree(source, tree)
    limit = source.limits.max_directory_bytes
    try:
        view.action = await _message(source, re_pb2.Action, digest, limit)
    except NotFound:
        return view
    command = actions.command_digest(view.action, digest.function)
    with contextlib.suppress(NotFound):
        view.command = await _message(source, re_pb2.Command, command, limit)
    return view
