"""The entries of an ``uploads/`` tree: directories, symlinks and files, and the error an
upload-side refusal raises. Plain data; ``Uploads`` (``uploads.py``) changes the trees,
and ``UploadDriver`` (``uploaddriver.py``) a file as its lifecycle (``uploadstate.py``)
decides.

Concurrency notes: used from the mount's trio thread only; a file's ``lock`` is held by
its commit, and ``committing`` is the event changes wait on (see ``uploaddriver.py``).
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
from casfs.fs.uploadmachine import FileState
from casfs.fs.uploadstate import Phase

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
        """Something below changed: no Directory digest above holds any more (nor one
        being found: ``changes`` tells)."""
        directory = self.parent
        while directory is not None:
            directory.digest = None
            directory.changes += 1
            directory = directory.parent

    def modified(self) -> None:
        """The content changed: a new mtime, and the digests above are stale."""
        self.mtime_ns = time.time_ns()
        self.invalidate()


@dataclass(eq=False)
class DirEntry(Entry):
    children: dict[str, Entry] = field(default_factory=dict)
    digest: Digest | None = None
    changes: int = 0  # changes below it so far (a digest found across one is stale)

    def modified(self) -> None:
        """Its entries changed (one added, removed or moved): its own digest is stale too,
        not only those above."""
        self.digest = None
        self.changes += 1
        super().modified()


@dataclass(eq=False)
class SymlinkEntry(Entry):
    target: str = ""


@dataclass(eq=False)
class FileEntry(Entry):
    """A file: its place, its spool and hashing, and its lifecycle (``life``, the state
    machine of ``uploadstate.py``: pending or committed, open counts, errors owed)."""

    instance: str = ""
    spool: Path | None = None
    fd: int | None = None
    size: int = 0
    mode: int = 0o644
    expected: Digest | None = None  # direct writes to blobs/<hash>/<size>
    hash_function: DigestFunction = DigestFunction.SHA256  # the remote's, for uploads/
    life: FileState = field(default_factory=FileState)
    hasher: HashBehind | None = None  # None: the writes were not sequential
    spooler: SpoolWriter | None = None  # lands the writes in the spool file, behind them
    lock: trio.Lock = field(default_factory=trio.Lock)  # held by the commit (finalize)
    # Set while a commit runs; done when it ends. Changes wait on it, not on ``lock``:
    # waiters that took and gave back the lock in turn would see it held forever.
    committing: trio.Event | None = None
    # Remote Asset qualifiers set with setfattr (user.casfs.qualifier.<name>); a file with
    # a URI is pushed with them after its commit (fs/nodes/assetpush.py).
    qualifiers: dict[str, str] = field(default_factory=dict)
    uri: str | None = None  # the asset name a commit pushes it under (assets/, user.casfs.uri)
    # What the last push that succeeded named: (URI, digest, qualifiers), or None.
    pushed_as: tuple[str, Digest, tuple[tuple[str, str], ...]] | None = None

    def __post_init__(self) -> None:
        self.life.direct = self.expected is not None

    @property
    def digest(self) -> Digest | None:
        return self.life.digest

    @property
    def committed(self) -> bool:
        return self.life.digest is not None

    def naming(self) -> tuple[str, Digest, tuple[tuple[str, str], ...]] | None:
        """What a push of this file would name: (URI, digest, qualifiers); None without
        a URI or a digest."""
        if self.uri is None or self.digest is None:
            return None
        return self.uri, self.digest, tuple(sorted(self.qualifiers.items()))

    @property
    def pushed(self) -> bool:
        """Whether its URI names its digest with its qualifiers by a push that succeeded
        (False with nothing to push)."""
        naming = self.naming()
        return naming is not None and naming == self.pushed_as

    @property
    def opens(self) -> int:
        return self.life.opens

    @property
    def writers(self) -> int:
        return self.life.writers

    @property
    def closed(self) -> bool:
        """A close asked for this content to be committed (the spool metadata says so)."""
        return self.life.closed

    @property
    def unlinked(self) -> bool:
        return self.life.phase in (Phase.UNLINKED, Phase.GONE)

    @property
    def function(self) -> DigestFunction:
        return self.expected.function if self.expected is not None else self.hash_function

    def label(self) -> str:
        return self.path() or (f"blobs/{self.expected}" if self.expected else self.name)
