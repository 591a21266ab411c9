"""tvix castore Directories as the checked model of ``trees/model.py``: the adapter that
lets a mount show a tvix Directory with the same tree nodes as a REAPI one.

Pure: no I/O. ``from_tvix`` is the one way a tvix Directory becomes a
:class:`~casfs.trees.model.Directory`, and it checks, before any name is used, what
``model.from_message`` checks of a REAPI Directory: every name one path segment ("" "."
".." "/" NUL refused), no name twice across the three lists, each list sorted (bytewise,
as tvix requires), at most ``TreeLimits.max_entries`` entries and
``TreeLimits.max_directory_bytes`` bytes, every digest 32 bytes, every symlink target
non-empty and NUL-free. Names must be UTF-8 too: the mount looks names up as UTF-8, so a
name it could list but never look up makes the Directory bad rather than half shown.
Symlink targets are data, any bytes: one that is not UTF-8 is decoded with
``surrogateescape`` (as ``tvixencode`` encodes it, and as ``os.fsencode`` gives the bytes
back to ``readlink``).

Digests: tvix names a Directory by the blake3 hash of its canonical serialization alone,
and a DirectoryNode pairs that hash with a ``size`` that is the number of entries below
it, counted recursively (``tvix_directory.size_of``), not a byte count. The model's
``Digest`` of a tvix Directory is that pair, ``Digest(hash, tvix size, BLAKE3)``: what a
DirectoryNode names, and never a blob's name. Files are ordinary blake3 blob digests.
The caller verifies that the message is the Directory its hash names (the client does:
``TvixClient.get_directories``); ``from_tvix`` computes the hash itself for the digest.

Failures raise ``BadDirectory`` (EIO in a file system).
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs.digest import Digest, DigestError, DigestFunction
from casfs.trees.model import (
    DEFAULT_LIMITS,
    BadDirectory,
    Directory,
    DirectoryNode,
    FileNode,
    SymlinkNode,
    TreeLimits,
    check_name,
)

BLAKE3 = DigestFunction.BLAKE3
ENTRY_COST = 200  # bytes of memory an entry takes, roughly (as ``Directory.cost`` counts)


@dataclass(frozen=True, slots=True)
class TvixDirectory:
    """A checked tvix Directory: the model's Directory and what it costs to keep."""

    directory: Directory
    cost: int  # bytes of memory, roughly: its serialization and its entries

    @property
    def hash(self) -> str:
        return self.directory.digest.hash


def _digest(raw: bytes, size: int, what: str) -> Digest:
    try:
        return Digest(raw.hex(), size, BLAKE3)
    except DigestError as error:
        raise BadDirectory(f"{what}: {error}") from None


def _name(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadDirectory(f"{what}: a name is not UTF-8: {raw[:200]!r}") from None
    return text


def from_tvix(message: castore_pb2.Directory, limits: TreeLimits = DEFAULT_LIMITS) -> TvixDirectory:
    """The checked model of the tvix Directory ``message`` (see the module notes).

    Raises ``BadDirectory`` if it breaks a rule or a limit.
    """
    data = tvix_directory.canonical_bytes(message)
    raw = blake3.blake3(data).digest()
    what = f"tvix Directory {raw.hex()}"
    count = len(message.directories) + len(message.files) + len(message.symlinks)
    if count > limits.max_entries:
        raise BadDirectory(f"{what}: {count} entries, more than {limits.max_entries}")
    if len(data) > limits.max_directory_bytes:
        raise BadDirectory(f"{what}: larger than {limits.max_directory_bytes} bytes")
    try:
        tvix_directory.check(message)
    except tvix_directory.DirectoryError as error:
        raise BadDirectory(f"{what}: {error}") from None
    directories = tuple(
        DirectoryNode(_name(n.name, what), _digest(n.digest, n.size, what))
        for n in message.directories
    )
    files = tuple(
        FileNode(_name(n.name, what), _digest(n.digest, n.size, what), n.executable)
        for n in message.files
    )
    symlinks = tuple(
        SymlinkNode(_name(n.name, what), n.target.decode("utf-8", "surrogateescape"))
        for n in message.symlinks
    )
    for group in (directories, files, symlinks):
        for node in group:
            check_name(node.name, what)  # the bytes passed: so does the text (belt and braces)
    size = count + sum(n.digest.size for n in directories)
    directory = Directory(
        digest=_digest(raw, size, what), files=files, directories=directories, symlinks=symlinks
    )
    return TvixDirectory(directory, len(data) + ENTRY_COST * count)
