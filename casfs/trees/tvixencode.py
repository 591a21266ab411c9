"""The one encoding of a directory as a tvix castore Directory, the counterpart of
``encode.py``'s REAPI one: the same entries (``encode.FileEntry``, ``DirectoryEntry``,
``SymlinkEntry``) become a ``castore_pb2.Directory`` with each list sorted by the names'
UTF-8 bytes, as tvix requires. A ``DirectoryEntry``'s digest is tvix's pair for a
Directory (its hash and the entries below it: ``tvixmodel``), a file's its blake3 blob
digest. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs.digest import Digest, DigestFunction
from casfs.trees.encode import DirectoryEntry, Entry, FileEntry


def directory_message(entries: Iterable[tuple[str, Entry]]) -> castore_pb2.Directory:
    """The tvix Directory of ``(name, entry)`` pairs, in any order. Digests must be
    blake3 (``ValueError`` otherwise)."""
    message = castore_pb2.Directory()
    for name, entry in sorted(((n.encode("utf-8"), e) for n, e in entries), key=lambda p: p[0]):
        if isinstance(entry, FileEntry | DirectoryEntry):
            if entry.digest.function is not DigestFunction.BLAKE3:
                raise ValueError(f"tvix names {name!r} by blake3, not {entry.digest.function}")
            raw = bytes.fromhex(entry.digest.hash)
            if isinstance(entry, FileEntry):
                message.files.add(
                    name=name, digest=raw, size=entry.digest.size, executable=entry.executable
                )
            else:
                message.directories.add(name=name, digest=raw, size=entry.digest.size)
        else:
            message.symlinks.add(name=name, target=entry.target.encode("utf-8", "surrogateescape"))
    return message


def digest_of(message: castore_pb2.Directory) -> Digest:
    """The Directory's digest as tvix pairs it in a DirectoryNode: hash and entries below."""
    return Digest(
        tvix_directory.digest_of(message).hex(),
        tvix_directory.size_of(message),
        DigestFunction.BLAKE3,
    )
