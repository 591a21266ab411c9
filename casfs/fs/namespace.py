"""The names of the mount's read-only tree, as rules: which names are well formed. No I/O.

    <mountpoint>/<instance>/blobs/<hash>/<size>         sha256 (and other legacy functions)
    <mountpoint>/<instance>/blobs/<fn>/<hash>/<size>    blake3, sha256tree, ...
    <mountpoint>/<instance>/uploads/...                 the upload tree (``fs/uploads.py``)

Instance names with ``/`` nest as directories; the empty instance name puts ``blobs/`` at
the root. The nodes (``fs/nodes/``) ask these rules which child a name would be; whether
a blob exists is not decided here.
"""

from __future__ import annotations

from collections.abc import Iterable

from casfs.digest import Digest, DigestError, DigestFunction

BLOBS = "blobs"
UPLOADS = "uploads"


def join(prefix: str, name: str) -> str:
    """The path of ``name`` inside the instance directory ``prefix``."""
    return f"{prefix}/{name}" if prefix else name


class Namespace:
    """The instance names and the digest functions in use, and the rules for names."""

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

    def subdirectories(self, path: str) -> list[str]:
        """The names of the instance directories inside the one at ``path``, sorted."""
        return sorted(self._dirs.get(path, ()))

    def is_instance(self, path: str) -> bool:
        """Whether the directory at ``path`` is an instance (it holds blobs/ and uploads/)."""
        return path in self.instances

    def named_functions(self) -> list[DigestFunction]:
        """The functions in use that have their own directory under ``blobs/``.

        The legacy functions (sha256, sha1, ...) live directly under ``blobs/``, told apart
        by hash length, as on the wire; giving them a directory too would give one node
        two parents."""
        return [f for f in sorted(self.functions, key=lambda f: f.value) if f.in_resource_name]

    def hash_function(self, name: str, function: DigestFunction | None) -> DigestFunction | None:
        """The function of the hash ``name`` in a directory of ``function`` (None: directly
        under ``blobs/``), or None if ``name`` is no such hash."""
        if function is None:
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
        return function

    @staticmethod
    def blob_digest(hash_: str, function: DigestFunction, name: str) -> Digest | None:
        """The digest a size ``name`` inside a hash directory names, or None."""
        if not name.isascii() or not name.isdigit() or (name != "0" and name[0] == "0"):
            return None
        try:
            return Digest(hash_, int(name), function)
        except DigestError:
            return None
