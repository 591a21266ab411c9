"""The one encoding of a directory as a REAPI Directory message.

``casfs put -r`` and ``uploads/`` (``user.casfs.digest`` of a directory) both build their
Directories here, so one tree gets one digest whichever way it was uploaded: entries
sorted by name, files with their digest and executable bit, no node properties. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.digest import Digest


@dataclass(frozen=True, slots=True)
class FileEntry:
    digest: Digest
    executable: bool


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    digest: Digest


@dataclass(frozen=True, slots=True)
class SymlinkEntry:
    target: str


Entry = FileEntry | DirectoryEntry | SymlinkEntry


def directory_bytes(entries: Iterable[tuple[str, Entry]]) -> bytes:
    """The serialized Directory of ``(name, entry)`` pairs, in any order."""
    message = re_pb2.Directory()
    for name, entry in sorted(entries, key=lambda pair: pair[0]):
        if isinstance(entry, FileEntry):
            message.files.add(
                name=name, digest=entry.digest.to_proto(), is_executable=entry.executable
            )
        elif isinstance(entry, DirectoryEntry):
            message.directories.add(name=name, digest=entry.digest.to_proto())
        else:
            message.symlinks.add(name=name, target=entry.target)
    return message.SerializeToString(deterministic=True)
