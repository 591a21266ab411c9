"""The mount's directory tree as values: which node a name names. No I/O.

    <mountpoint>/<instance>/blobs/<hash>/<size>         sha256 (and other legacy functions)
    <mountpoint>/<instance>/blobs/<fn>/<hash>/<size>    blake3, sha256tree, ...

Instance names with ``/`` nest as directories; the empty instance name puts ``blobs/`` at
the root. Whether a blob exists is not decided here: ``child`` only says which node a
well-formed name would be, and None for a malformed one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from casfs.digest import Digest, DigestError, DigestFunction

BLOBS = "blobs"
UPLOADS = "uploads"


@dataclass(frozen=True, slots=True)
class InstanceDir:
    """The root (``path == ""``) or a directory on the way to or at an instance name."""

    path: str


@dataclass(frozen=True, slots=True)
class BlobsDir:
    """``<instance>/blobs/``."""

    instance: str


@dataclass(frozen=True, slots=True)
class FunctionDir:
    """``<instance>/blobs/<fn>/`` for a function named in resource names (blake3, ...).

    The legacy functions (sha256, sha1, ...) live directly under ``blobs/``, told apart by
    hash length, as on the wire; giving them a directory too would give one node two
    parents."""

    instance: str
    function: DigestFunction


@dataclass(frozen=True, slots=True)
class HashDir:
    """``<instance>/blobs/[<fn>/]<hash>/``: lists the sizes seen for the hash."""

    instance: str
    function: DigestFunction
    hash: str


@dataclass(frozen=True, slots=True)
class UploadsDir:
    """``<instance>/uploads/``: writable; files become blobs when closed."""

    instance: str


@dataclass(frozen=True, slots=True)
class UploadNode:
    """A file, directory or symlink below ``uploads/`` (or a direct write into blobs/),
    named by the id of its entry in ``fs/uploads.py``."""

    instance: str
    id: int


@dataclass(frozen=True, slots=True)
class BlobFile:
    """``<instance>/blobs/[<fn>/]<hash>/<size>``: the blob, read-only."""

    instance: str
    digest: Digest


Node = InstanceDir | BlobsDir | FunctionDir | HashDir | BlobFile | UploadsDir | UploadNode
ROOT = InstanceDir("")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class Namespace:
    """Name resolution for a set of instance names and the digest functions in use."""

    def __init__(self, instances: Iterable[str], functions: Iterable[DigestFunction]) -> None:
        self.instances = frozenset(instances)
        self.functions = frozenset(functions) | {DigestFunction.SHA256}
        self._dirs: dict[str, set[str]] = {"": set()}
        for instance in self.instances:
            parts = instance.split("/") if instance else []
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                self._dirs.setdefault(parent, set()).add(parts[depth])
                self._dirs.setdefault("/".join(parts[: depth + 1]), set())

    def static_children(self, node: Node) -> list[tuple[str, Node]]:
        """The entries a directory always has (blob entries come from what was seen)."""
        if isinstance(node, InstanceDir):
            entries: list[tuple[str, Node]] = [
                (name, InstanceDir(_join(node.path, name)))
                for name in sorted(self._dirs.get(node.path, ()))
            ]
            if node.path in self.instances:
                entries.append((BLOBS, BlobsDir(node.path)))
                entries.append((UPLOADS, UploadsDir(node.path)))
            return entries
        if isinstance(node, BlobsDir):
            return [
                (f.name_lower, FunctionDir(node.instance, f))
                for f in sorted(self.functions, key=lambda f: f.value)
                if f.in_resource_name
            ]
        return []

    def child(self, parent: Node, name: str) -> Node | None:
        """The node ``name`` names inside ``parent``, or None if it cannot exist.

        Names inside ``uploads/`` are not decided here but by the upload trees."""
        if isinstance(parent, InstanceDir):
            return dict(self.static_children(parent)).get(name)
        if isinstance(parent, BlobsDir):
            for entry, node in self.static_children(parent):
                if entry == name:
                    return node
            return self._hash_dir(parent.instance, name, None)
        if isinstance(parent, FunctionDir):
            return self._hash_dir(parent.instance, name, parent.function)
        if isinstance(parent, HashDir):
            if not name.isascii() or not name.isdigit() or (name != "0" and name[0] == "0"):
                return None
            try:
                digest = Digest(parent.hash, int(name), parent.function)
            except DigestError:
                return None
            return BlobFile(parent.instance, digest)
        return None

    def _hash_dir(
        self, instance: str, name: str, function: DigestFunction | None
    ) -> HashDir | None:
        if function is None:
            # Directly under blobs/: the legacy functions, told apart by hash length.
            try:
                function = DigestFunction.from_hex_length(len(name))
            except DigestError:
                return None
        if function not in self.functions or len(name) != function.hex_length:
            return None
        try:
            Digest(name, 0, function)
        except DigestError:
            return None
        return HashDir(instance, function, name)
