"""REAPI Directory messages, verified and checked before any name in them becomes a path.

Pure: no I/O. ``parse_directory`` is the one way a Directory's bytes become a
:class:`Directory`: the bytes must match the digest they were fetched by (content
addressing rules out cycles and escapes only when digests are verified), must parse, and
every name must be one path segment ("" "." ".." "/" NUL refused), unique across the
files, directories and symlinks, and each list sorted by name as REAPI requires. Entry
counts and depth are bounded by :class:`TreeLimits`.

Failures are casfs errors (``CasError`` subclasses, EIO in a file system): a Directory
that breaks a rule is :class:`BadDirectory`, bytes that do not match their digest are
``DataLoss``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.errors import CasError, DataLoss
from casfs.digest import Digest, DigestError, DigestFunction

DEFAULT_MAX_ENTRIES = 100_000
"""Entries (files, directories, symlinks) one Directory may hold."""
DEFAULT_MAX_DEPTH = 256
"""Directories below a tree's root on one path."""
DEFAULT_MAX_DIRECTORY_BYTES = 16 << 20
"""The largest Directory, Action or Command blob fetched (a hostile size must not become
an allocation)."""
DEFAULT_MAX_TOTAL_ENTRIES = 10_000_000
"""Entries a whole tree may hold when it is walked to its end (``casfs get -r``): shared
subtrees count once per path, so a small hostile DAG cannot unfold without bound."""
DEFAULT_MAX_TREE_BYTES = 256 << 20
"""The largest Tree blob (an output directory, all its Directories in one message)."""


@dataclass(frozen=True, slots=True)
class TreeLimits:
    """Bounds on what a hostile tree may make us hold."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_directory_bytes: int = DEFAULT_MAX_DIRECTORY_BYTES
    max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES
    max_total_entries: int = DEFAULT_MAX_TOTAL_ENTRIES


DEFAULT_LIMITS = TreeLimits()


class BadDirectory(CasError):
    """A Directory (or Tree, or ActionResult) that does not parse or breaks a rule: EIO."""

    errno = errno.EIO


class TooDeep(BadDirectory):
    """A tree deeper than ``TreeLimits.max_depth``."""


@dataclass(frozen=True, slots=True)
class FileNode:
    name: str
    digest: Digest
    executable: bool
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    name: str
    digest: Digest


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    name: str
    target: str
    mtime_ns: int | None = None


Node = FileNode | DirectoryNode | SymlinkNode


@dataclass(frozen=True, slots=True)
class Directory:
    """A checked Directory: its digest, its entries by name, and its size in bytes."""

    digest: Digest
    files: tuple[FileNode, ...]
    directories: tuple[DirectoryNode, ...]
    symlinks: tuple[SymlinkNode, ...]
    mtime_ns: int | None = None

    @property
    def entries(self) -> dict[str, Node]:
        """Every entry by name (a new dict each call)."""
        out: dict[str, Node] = {}
        for group in (self.files, self.directories, self.symlinks):
            for node in group:
                out[node.name] = node
        return out

    @property
    def cost(self) -> int:
        """What it holds in memory, roughly: for a cache bounded by bytes."""
        return self.digest.size + 200 * (
            len(self.files) + len(self.directories) + len(self.symlinks)
        )


def check_name(name: str, what: str) -> None:
    """Raise ``BadDirectory`` unless ``name`` is one path segment."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise BadDirectory(f"{what}: an entry is named {name[:200]!r}")


def verify(data: bytes, digest: Digest, what: str = "") -> None:
    """Raise ``DataLoss`` unless ``data`` is the blob ``digest`` names."""
    if Digest.of_bytes(data, digest.function) != digest:
        raise DataLoss(f"{what or digest}: the bytes fetched do not match {digest}")


def _mtime(properties: re_pb2.NodeProperties) -> int | None:
    if properties.HasField("mtime"):
        return int(properties.mtime.ToNanoseconds())
    return None


def proto_digest(proto: re_pb2.Digest, function: DigestFunction, what: str) -> Digest:
    try:
        return Digest.from_proto(proto, function)
    except DigestError as error:
        raise BadDirectory(f"{what}: {error}") from None


def from_message(
    message: re_pb2.Directory, digest: Digest, limits: TreeLimits = DEFAULT_LIMITS
) -> Directory:
    """Check a parsed Directory named ``digest`` (whose bytes the caller verified)."""
    what = f"Directory {digest}"
    count = len(message.files) + len(message.directories) + len(message.symlinks)
    if count > limits.max_entries:
        raise BadDirectory(f"{what}: {count} entries, more than {limits.max_entries}")
    seen: set[str] = set()
    for kind, names in (
        ("file", [n.name for n in message.files]),
        ("directory", [n.name for n in message.directories]),
        ("symlink", [n.name for n in message.symlinks]),
    ):
        previous: str | None = None
        for name in names:
            check_name(name, what)
            if previous is not None and name <= previous:
                raise BadDirectory(f"{what}: {kind} {name[:200]!r} is out of order or repeated")
            if name in seen:
                raise BadDirectory(f"{what}: two entries are named {name[:200]!r}")
            seen.add(name)
            previous = name
    function = digest.function
    for node in message.symlinks:
        if not node.target or "\0" in node.target:
            raise BadDirectory(f"{what}: symlink {node.name!r} has target {node.target[:200]!r}")
    return Directory(
        digest=digest,
        files=tuple(
            FileNode(
                n.name,
                proto_digest(n.digest, function, what),
                n.is_executable,
                _mtime(n.node_properties),
            )
            for n in message.files
        ),
        directories=tuple(
            DirectoryNode(n.name, proto_digest(n.digest, function, what))
            for n in message.directories
        ),
        symlinks=tuple(
            SymlinkNode(n.name, n.target, _mtime(n.node_properties)) for n in message.symlinks
        ),
        mtime_ns=_mtime(message.node_properties),
    )


def parse_directory(data: bytes, digest: Digest, limits: TreeLimits = DEFAULT_LIMITS) -> Directory:
    """The checked Directory whose bytes ``data`` were fetched as ``digest``.

    Raises ``DataLoss`` if the bytes do not match, ``BadDirectory`` if they do not parse
    or break a rule.
    """
    if digest.size > limits.max_directory_bytes:
        raise BadDirectory(f"Directory {digest}: larger than {limits.max_directory_bytes} bytes")
    verify(data, digest, f"Directory {digest}")
    return from_message(
        parse_message(re_pb2.Directory, data, f"Directory {digest}"), digest, limits
    )


M = TypeVar("M", re_pb2.Directory, re_pb2.Tree, re_pb2.ActionResult, re_pb2.Action, re_pb2.Command)


def parse_message(cls: type[M], data: bytes, what: str) -> M:
    """``data`` parsed as ``cls``; ``BadDirectory`` if it does not parse."""
    try:
        return cls.FromString(data)
    except (DecodeError, RuntimeError) as error:
        raise BadDirectory(f"{what}: does not parse as {cls.__name__}: {error}") from None


def parse_tree(
    data: bytes, digest: Digest, limits: TreeLimits = DEFAULT_LIMITS
) -> tuple[Directory, dict[Digest, Directory]]:
    """A verified Tree message (an output directory): its root and its children by digest.

    Each child's digest is taken of its serialization in the Tree (as REAPI defines it);
    the root gets the digest of its own serialization too. Every directory the root
    reaches must be among the children, within ``limits.max_depth``.
    """
    if digest.size > limits.max_tree_bytes:
        raise BadDirectory(f"Tree {digest}: larger than {limits.max_tree_bytes} bytes")
    verify(data, digest, f"Tree {digest}")
    tree = parse_message(re_pb2.Tree, data, f"Tree {digest}")
    function = digest.function
    children: dict[Digest, Directory] = {}
    for child in tree.children:
        raw = child.SerializeToString(deterministic=True)
        child_digest = Digest.of_bytes(raw, function)
        children[child_digest] = from_message(child, child_digest, limits)
    raw_root = tree.root.SerializeToString(deterministic=True)
    root = from_message(tree.root, Digest.of_bytes(raw_root, function), limits)
    check_reachable(root, children, limits, f"Tree {digest}")
    return root, children


def check_reachable(
    root: Directory, known: dict[Digest, Directory], limits: TreeLimits, what: str
) -> None:
    """Raise unless every directory below ``root`` is in ``known``, within the depth limit."""
    level = [root]
    depth = 0
    done: set[Digest] = set()
    while level:
        depth += 1
        below: list[Directory] = []
        for directory in level:
            for node in directory.directories:
                if node.digest in done:
                    continue
                if depth > limits.max_depth:
                    raise TooDeep(f"{what}: deeper than {limits.max_depth} directories")
                child = known.get(node.digest)
                if child is None:
                    raise BadDirectory(
                        f"{what}: directory {node.name!r} ({node.digest}) is missing"
                    )
                done.add(node.digest)
                below.append(child)
        level = below
