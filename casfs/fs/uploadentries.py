"""The entries of an ``uploads/`` tree: directories, symlinks and files, and the error an
upload-side refusal raises. Plain data; ``Uploads`` (``uploads.py``) changes them.

Concurrency notes: used from the mount's trio thread only; a file's ``lock`` is held by
its commit, and ``committing`` is the event changes wait on (see ``uploads.py``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from casfs.digest import Digest, DigestFunction
from casfs.fs.hashbehind import HashBehind
from casfs.fs.spoolwriter import SpoolWriter

_ids = itertools.count(1)


class UploadError(Exception):
    """An upload-side refusal with the errno a user should see."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(eq=False)
class Entry:
    """A name in an ``uploads/`` tree."""

    name: str
    parent: DirEntry | None
    id: int = field(default_factory=lambda: next(_ids))
    mtime_ns: int = field(default_factory=time.time_ns)

    def path(self) -> str:
        """The path below ``uploads/``."""
        parts = []
        entry: Entry | None = self
        while entry is not None and entry.parent is not None:
            parts.append(entry.name)
            entry = entry.parent
        return "/".join(reversed(parts))

    def invalidate(self) -> None:
        """Something below changed: no Directory digest above holds any more."""
        directory = self.parent
        while directory is not None:
            directory.digest = None
            directory = directory.parent

    def modified(self) -> None:
        """The content changed: a new mtime, and the digests above are stale."""
        self.mtime_ns = time.time_ns()
        self.invalidate()


@dataclass(eq=False)
class DirEntry(Entry):
    children: dict[str, Entry] = field(default_factory=dict)
    digest: Digest | None = None


@dataclass(eq=False)
class SymlinkEntry(Entry):
    target: str = ""


@dataclass(eq=False)
class FileEntry(Entry):
    """A file: pending (``digest`` None) or committed; spooled while open or pending."""

    instance: str = ""
    spool: Path | None = None
    fd: int | None = None
    size: int = 0
    mode: int = 0o644
    digest: Digest | None = None
    expected: Digest | None = None  # direct writes to blobs/<hash>/<size>
    hash_function: DigestFunction = DigestFunction.SHA256  # the remote's, for uploads/
    opens: int = 0
    writers: int = 0
    closed: bool = False  # a close asked for this content to be committed
    unlinked: bool = False
    hasher: HashBehind | None = None  # None: the writes were not sequential
    spooler: SpoolWriter | None = None  # lands the writes in the spool file, behind them
    write_error: OSError | None = None  # a write that failed after it was answered
    # Writes were answered that never landed (a full disk) and the file was cut where they
    # began. Until a truncate to at most its size says what the file holds, a write past
    # its end would leave a hole where the program believes its bytes are: it fails with
    # this error, and so does every close that commits the file (through any descriptor:
    # a duplicate's close must not clear it for the writer).
    lost: OSError | None = None
    # A direct write whose content did not match its name at its last close. A shell's
    # ``cat x > blobs/H/S`` closes a duplicate of the descriptor before anything is
    # written, so the file stays writable through the other descriptors until the last
    # one is released; then it is dropped, and nothing is stored.
    refused: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)  # held by the commit (finalize)
    # Set while a commit runs; done when it ends. Changes wait on it, not on ``lock``:
    # waiters that took and gave back the lock in turn would see it held forever.
    committing: trio.Event | None = None

    @property
    def committed(self) -> bool:
        return self.digest is not None

    @property
    def function(self) -> DigestFunction:
        return self.expected.function if self.expected is not None else self.hash_function

    def label(self) -> str:
        return self.path() or (f"blobs/{self.expected}" if self.expected else self.name)
