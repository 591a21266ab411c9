"""tvix castore Directories: their digest, their recursive size, and the checks a Directory
must pass before it is stored or its names become paths.

Used by the server (DirectoryService.Put checks each Directory before storing it) and by
any client that turns Directories into paths. Pure functions, no I/O.
"""

from __future__ import annotations

import blake3

from casfs._proto.tvix import castore_pb2

DIGEST_BYTES = 32
"""Length of a raw blake3 digest, as tvix sends it."""


class DirectoryError(ValueError):
    """A tvix Directory breaks a rule of castore.proto; the message names the entry."""


def check_digest(raw: bytes, what: str) -> None:
    """Raise ``DirectoryError`` unless ``raw`` is a 32-byte blake3 digest."""
    if len(raw) != DIGEST_BYTES:
        raise DirectoryError(f"{what}: digest of {len(raw)} bytes, not {DIGEST_BYTES}")


def canonical_bytes(directory: castore_pb2.Directory) -> bytes:
    """The serialization the digest is taken of: fields in number order, no unknown fields
    (as tvix's own encoder writes it). ``directory`` is not modified."""
    copy = castore_pb2.Directory()
    copy.CopyFrom(directory)
    copy.DiscardUnknownFields()
    return copy.SerializeToString(deterministic=True)


def digest_of(directory: castore_pb2.Directory) -> bytes:
    """The raw blake3 digest that names ``directory``."""
    return blake3.blake3(canonical_bytes(directory)).digest()


def size_of(directory: castore_pb2.Directory) -> int:
    """Entries below ``directory``, counted recursively through its DirectoryNodes' sizes."""
    return (
        len(directory.directories)
        + len(directory.files)
        + len(directory.symlinks)
        + sum(node.size for node in directory.directories)
    )


def _check_name(name: bytes, kind: str) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise DirectoryError(f"{kind} has an invalid name {name[:200]!r}")


def check(directory: castore_pb2.Directory) -> None:
    """Raise ``DirectoryError`` unless every name is one path segment (not empty, no '/',
    no NUL, not '.' or '..'), each list is sorted by name with no name twice across the
    lists, every digest has 32 bytes and every symlink target is non-empty and NUL-free.

    Whether the children exist, and whether a DirectoryNode's size is right, needs the
    children: the caller checks that with ``size_of``.
    """
    seen: set[bytes] = set()
    lists: list[tuple[str, list[bytes]]] = [
        ("directory", [node.name for node in directory.directories]),
        ("file", [node.name for node in directory.files]),
        ("symlink", [node.name for node in directory.symlinks]),
    ]
    for kind, names in lists:
        previous: bytes | None = None
        for name in names:
            _check_name(name, kind)
            if previous is not None and name <= previous:
                raise DirectoryError(f"{kind} {name[:200]!r} is out of order or repeated")
            if name in seen:
                raise DirectoryError(f"{kind} {name[:200]!r} has the name of another entry")
            seen.add(name)
            previous = name
    for node in directory.directories:
        check_digest(node.digest, f"directory {node.name[:200]!r}")
    for file in directory.files:
        check_digest(file.digest, f"file {file.name[:200]!r}")
    for link in directory.symlinks:
        if not link.target or b"\0" in link.target:
            raise DirectoryError(f"symlink {link.name[:200]!r} has an invalid target")
