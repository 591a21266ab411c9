"""The write side's state: the ``uploads/`` trees of every instance and their changes
(new files, removals, moves, a directory's digest).

No FUSE in here: the upload nodes (``fs/nodes/uploadtree.py``, ``uploadfiles.py``) map
requests onto these objects, and ``fs/operations.py`` their errors onto errno values.
``Uploads`` is put together from parts, one job each: the entries are
``uploadentries.py``'s; the lifecycle of a file (open, write, truncate, release, commit)
is the state machine of ``uploadstate.py``, carried out by ``uploaddriver.py``; the spool
files are ``spool.py``'s; the names across mounts and the recovery of left-over files
``uploadjournal.py``'s.

The names (directories, symlinks, committed files with their modes, mtimes and digests)
outlive the mount: each change is appended to a journal in ``<cache dir>/names``
(``journal.py``; the record format is in ``uploadjournal.py``), and the next mount of the
same cache directory replays it before it answers. A committed file comes back with no
spool: it reads from the CAS.

Concurrency notes: everything runs in the mount's trio thread. A change of the tree that
takes a file out of it or moves it (unlink, rename, a create over it) first waits for a
commit of that file in progress (``wait_for_commits``), then looks its entries up again
and changes them with no checkpoint in between; the file's ``FileState`` answers WAIT
(EBUSY here) if that was not so (``check_idle`` guards it).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping

import trio

from casfs.cas.remote import BlobRemote
from casfs.digest import Digest
from casfs.fs.behind import ByteBudget
from casfs.fs.journal import Journal
from casfs.fs.spool import Spool
from casfs.fs.uploadcommit import UploadCommits, UploadStats
from casfs.fs.uploadentries import DirEntry, Entry, FileEntry, SymlinkEntry, UploadError
from casfs.fs.uploadjournal import COMPACT_EVERY, UploadJournal
from casfs.fs.uploadmachine import FileState
from casfs.trees import encode
from casfs.trees.storedirs import DirectoryStore

__all__ = [  # the upload side's names, wherever they are defined
    "DirEntry",
    "Entry",
    "FileEntry",
    "Spool",
    "SymlinkEntry",
    "UploadError",
    "UploadStats",
    "Uploads",
]

log = logging.getLogger("casfs.fs")


class Uploads(UploadJournal, UploadCommits):
    """The ``uploads/`` trees of all instances: their changes here, the lifecycle of their
    files in ``UploadDriver`` and ``UploadCommits``, their names across mounts and the
    recovery of left-overs in ``UploadJournal``."""

    def __init__(
        self,
        clients: Mapping[str, BlobRemote],
        spool: Spool,
        nursery: trio.Nursery,
        names: Journal | None = None,
    ) -> None:
        self.clients = clients
        self.spool = spool
        self.names = names  # None: the names are forgotten at unmount
        self._nursery = nursery  # where files' hashing workers run
        self._hash_budget = ByteBudget()  # bytes written, not hashed yet, of all files
        self._spool_budget = ByteBudget()  # bytes answered, not in a spool file yet
        self._writing: set[FileEntry] = set()  # files with a spool writer
        self.roots = {name: DirEntry(name="", parent=None) for name in clients}
        self._instance_of = {root: name for name, root in self.roots.items()}
        self._compact_at = COMPACT_EVERY  # changes journaled between compactions
        self._changes = 0
        self._entries = 0  # records in the last snapshot
        self.active = 0
        self.stats = UploadStats()
        self.idle = trio.Event()
        self.idle.set()

    # -- files ------------------------------------------------------------------------------

    def new_file(
        self, instance: str, parent: DirEntry | None, name: str, mode: int, expected: Digest | None
    ) -> FileEntry:
        """A new empty file (replacing a file of that name) with its spool file: PENDING."""
        entry = FileEntry(
            name=name, parent=parent, instance=instance, mode=mode & 0o777, expected=expected
        )
        entry.hash_function = self.clients[instance].upload_function
        old = parent.children.get(name) if parent is not None else None
        if isinstance(old, DirEntry):
            raise UploadError(errno.EISDIR, f"{name} is a directory")
        if isinstance(old, FileEntry):
            self.check_idle(old)
        self._create_spool(entry)
        if parent is not None:
            if old is not None:
                self.remove(old)
            parent.children[name] = entry
        entry.modified()
        return entry

    def remove(self, entry: Entry) -> None:
        """Take an entry out of its tree (a committed blob stays in the CAS), and journal
        it. An open file keeps its spool until released; its upload is abandoned."""
        where = self._where(entry)
        self._detach(entry)
        if where is not None and entry.parent is not None:
            self._journal({"rm": where[1], "i": where[0]})
            self.saved(entry.parent)

    def _detach(self, entry: Entry) -> None:
        if isinstance(entry, FileEntry):  # what is still queued would only fill the disk
            self._step(entry, FileState.unlink)
        elif isinstance(entry, DirEntry):
            for child in list(entry.children.values()):
                self._detach(child)
        if entry.parent is not None and entry.parent.children.get(entry.name) is entry:
            del entry.parent.children[entry.name]
            entry.parent.modified()

    def moved(self, entry: Entry, old_parent: DirEntry, old_name: str) -> None:
        """After a rename: digests above are stale, pending files record their paths, and
        the journal says where the entry went."""
        old = self._where(old_parent)
        new = self._where(entry)
        if old is not None and new is not None:
            old_path = f"{old[1]}/{old_name}" if old[1] else old_name
            self._journal({"mv": old_path, "to": new[1], "i": new[0]})
            self.saved(old_parent)
            if entry.parent is not None and entry.parent is not old_parent:
                self.saved(entry.parent)
        self._rerecord(entry)

    def _rerecord(self, entry: Entry) -> None:
        entry.invalidate()
        if isinstance(entry, FileEntry):
            self._step(entry, FileState.move)
        elif isinstance(entry, DirEntry):
            for child in entry.children.values():
                self._rerecord(child)

    async def directory_digest(self, directory: DirEntry, instance: str) -> Digest:
        """The digest of a directory as a Directory of the remote's protocol (REAPI's, or
        tvix's: ``trees/storedirs.py``), uploading what it refers to: its files, and its
        Directories (on a tvix castore all of the subtree's by one Put, each once, rebuilt
        from this tree even where a digest is known, as upstream tvix requires).

        Files still open for writing make it EBUSY. The digests found are kept (until a
        change below clears them) only once everything is stored, and only those of
        directories nothing below changed in meanwhile; on a failure or cancellation none
        is, and the next asker starts again.
        """
        if directory.digest is not None:
            return directory.digest
        store = DirectoryStore(self.clients[instance])
        found: list[tuple[DirEntry, int, Digest]] = []
        digest = await self._gather(directory, store, found)
        await store.finish()
        for entry, changes, known in found:
            if entry.changes == changes:
                entry.digest = known
        return digest

    async def _gather(
        self,
        directory: DirEntry,
        store: DirectoryStore,
        found: list[tuple[DirEntry, int, Digest]],
    ) -> Digest:
        """Add the Directories of ``directory``'s subtree to ``store``, leaves first, and
        note each one's digest in ``found`` with its ``changes`` before it was listed."""
        if directory.digest is not None and not store.subtrees_again:
            return directory.digest
        changes = directory.changes
        entries: list[tuple[str, encode.Entry]] = []
        for name, child in list(directory.children.items()):
            if isinstance(child, FileEntry):
                if child.writers:
                    raise UploadError(errno.EBUSY, f"{child.path()} is still open for writing")
                digest = await self.finalize(child)
                entries.append((name, encode.FileEntry(digest, bool(child.mode & 0o111))))
            elif isinstance(child, DirEntry):
                digest = await self._gather(child, store, found)
                entries.append((name, encode.DirectoryEntry(digest)))
            elif isinstance(child, SymlinkEntry):
                entries.append((name, encode.SymlinkEntry(child.target)))
        digest = await store.add(entries)
        found.append((directory, changes, digest))
        return digest

    def _count_recovered(self, count: int) -> None:
        self.stats.recovered += count
