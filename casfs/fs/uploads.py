"""The write side's state: the ``uploads/`` trees, spool files, hashing, and finalize.

No FUSE in here: the upload nodes (``fs/nodes/uploadtree.py``, ``uploadfiles.py``) map
requests onto these objects, and ``fs/operations.py`` their errors onto errno values.
The entries themselves are ``uploadentries.py``'s, the spool files ``spool.py``'s, and the
names across mounts and the recovery of left-over files ``uploadjournal.py``'s.

A file written under ``<instance>/uploads/`` is spooled to ``<cache dir>/spool/<id>.data``
(mode 0600), hashed as it is written when the writes are sequential (rehashed otherwise),
and committed at every ``close()`` (and ``fsync``) that finds it changed: FindMissingBlobs
first, then BatchUpdateBlobs for small blobs or a resumable ByteStream Write. A write after
a commit (through a descriptor still open: a duplicate, a forked child, mmap) makes the
file pending again, and the next close commits it again, so every close reports on the
data written so far. The spool file lives until the last open handle is released.

A write is answered once it is queued for its spool file: a ``SpoolWriter`` lands the
writes in order in a worker thread (whole blocks around the page cache, since the spool
is read once, by the upload), so ``cp`` sends its next write while the last one goes to
the disk. Everything that looks at the spool first waits for the writes answered before
it (``_settle``): reads, truncates, the last writer's release, and the close that commits.
A write that fails there (a full disk) cuts the file before it and is reported once, by
the file's next write or by its close, which still commits the bytes before it.

Next to each spool file a ``<id>.json`` says where the file belongs and whether a close
asked for it (``closed``). A mount that ends or dies before a closed file is committed
leaves it to the next mount of the same cache directory, which uploads it; a file that
was never closed (its writer died with the mount) comes back pending and is not uploaded,
and if the mount was killed its last writes (16 MiB at most) may be missing from it: they
were answered but still queued. An unmount or a signal lands them first.

The names themselves (directories, symlinks, committed files with their modes, mtimes
and digests) outlive the mount: each change is appended to a journal in
``<cache dir>/names`` (``journal.py``; the record format is in "names across mounts"
below), and the next mount of the same cache directory replays it before it answers.
A committed file comes back with no spool: it reads from the CAS.

Concurrency notes: everything runs in the mount's trio thread. Each file has a
``trio.Lock`` held while it is finalized, so concurrent closes upload it once; writes,
truncates, opens for writing, unlinks and renames of a file being finalized wait for it
(``wait_for_commits``), then check the state again with no checkpoint before they change
it (``check_idle`` guards that), so nothing changes a file under its commit.
``Uploads.active`` counts finalizations in progress, so that an unmount can wait for them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import trio

from casfs.cas.errors import ContentChanged
from casfs.cas.remote import BlobRemote
from casfs.digest import Digest, digest_file
from casfs.fs.behind import ByteBudget
from casfs.fs.hashbehind import HashBehind
from casfs.fs.journal import Journal
from casfs.fs.spool import Spool
from casfs.fs.spoolwriter import SpoolWriter
from casfs.fs.uploadentries import DirEntry, Entry, FileEntry, SymlinkEntry, UploadError
from casfs.fs.uploadjournal import COMPACT_EVERY, UploadJournal
from casfs.trees import encode

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


@dataclass
class UploadStats:
    """Finalizations so far, for ``casfs status`` and the metrics (in flight:
    ``Uploads.active``)."""

    committed: int = 0  # ended with the blob in the CAS
    deduplicated: int = 0  # of those, the server had the blob already: nothing was sent
    failed: int = 0  # ended in an error; the file stays spooled
    recovered: int = 0  # left by an earlier mount and brought back to be finished
    uploaded_bytes: int = 0  # blob bytes sent to the CAS


class Uploads(UploadJournal):
    """The ``uploads/`` trees of all instances and the finalize logic (their names across
    mounts and the recovery of left-overs: ``UploadJournal``)."""

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
        """A new empty file (replacing a file of that name) with its spool file."""
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

    def check_idle(self, entry: FileEntry) -> None:
        """A guard for changes made with no checkpoint after ``wait_for_commits``."""
        if entry.committing is not None:
            raise UploadError(errno.EBUSY, f"{entry.label()} is being uploaded")

    async def wait_for_commits(self, *entries: Entry | None) -> bool:
        """Wait until no commit of these files is in progress; return whether it waited
        (then the caller looks its entries up again: the tree may have changed). A change
        that comes during a commit waits for it, as a program waits for a lock on a local
        file system, then makes the file pending again (its next close commits it again):
        no program expects EBUSY from a write. Cancelled, it stops waiting."""
        waited = False
        for entry in entries:
            if isinstance(entry, FileEntry) and entry.committing is not None:
                await entry.committing.wait()
                waited = True
        return waited

    async def _quiet(self, entry: FileEntry, *, settle: bool) -> None:
        """Wait until no commit of ``entry`` is in progress and, with ``settle`` (else only
        after a write failed there), every answered write is in its spool. It returns
        with no checkpoint after its last check, so the caller's change holds."""
        while True:
            if await self.wait_for_commits(entry):
                continue
            failed = entry.spooler is not None and entry.spooler.error is not None
            if settle or failed:
                await self._settle(entry)
                settle = False
                if entry.committing is not None:
                    continue
            return

    async def open(self, entry: FileEntry, *, write: bool, truncate: bool) -> None:
        """Count an open handle. Writing a committed file whose spool is gone starts it over
        (only with O_TRUNC: casfs keeps no copy of committed content to modify). Opening
        for writing waits for a commit in progress."""
        if write:
            await self._quiet(entry, settle=True)  # no wait from here on: the checks hold
            if entry.spool is None:
                if not truncate:
                    raise UploadError(errno.EACCES, f"{entry.label()} is committed and read-only")
                entry.digest = None
                self._create_spool(entry)
                entry.modified()
            elif truncate:
                self._truncate_settled(entry, 0)
            if entry.fd is None and entry.spool is not None:
                entry.fd = os.open(entry.spool, os.O_RDWR)
            entry.writers += 1
        entry.opens += 1

    def _create_spool(self, entry: FileEntry) -> None:
        self.spool.create(entry)
        self._restart_hash(entry)

    def _restart_hash(self, entry: FileEntry) -> None:
        entry.hasher = HashBehind(entry.function, self._nursery, self._hash_budget)

    def _changed(self, entry: FileEntry) -> None:
        """The content changed: pending again, and not closed since."""
        entry.digest = None
        entry.refused = False
        if entry.closed:
            entry.closed = False
            self.spool.record(entry)
        entry.modified()

    async def write(self, entry: FileEntry, offset: int, data: bytes) -> int:
        """Answer a write once it is queued for the spool file (``spoolwriter``); sequential
        writes are hashed behind too (``hashbehind``). The state is updated before any
        wait, so a close that comes meanwhile sees it all. An earlier write that failed
        after it was answered fails this one, once, and every later one past the end of the
        file that failure cut short (see ``FileEntry.lost``). A write during a commit
        waits for it."""
        await self._quiet(entry, settle=False)  # no wait from here until the write is queued
        if entry.fd is None or entry.spool is None:
            raise UploadError(errno.EBADF, f"{entry.label()} is not open for writing")
        if entry.write_error is not None:
            error, entry.write_error = entry.write_error, None
            raise error
        if entry.lost is not None and offset > entry.size:
            # The kernel turned the failure of one part of a large write into a short
            # write, and the program goes on past bytes it believes are written.
            raise UploadError(
                entry.lost.errno or errno.EIO,
                f"{entry.label()}: bytes written before offset {offset} were lost at "
                f"{entry.size} ({entry.lost.strerror or entry.lost})",
            )
        spooler = entry.spooler
        if spooler is None:
            spooler = entry.spooler = SpoolWriter(entry.spool, self._nursery, self._spool_budget)
            self._writing.add(entry)
        try:
            spooler.submit(offset, data)
        except OSError:  # a small write, landed at once, failed: nothing of it stays past the end
            if offset + len(data) > entry.size:
                os.truncate(entry.spool, entry.size)
            raise
        hasher = entry.hasher
        if hasher is None or offset != hasher.size:
            entry.hasher = hasher = None  # not sequential: rehash at finalize
        entry.size = max(entry.size, offset + len(data))
        self._changed(entry)
        if hasher is not None:
            hasher.feed_nowait(data)
        await spooler.keep_up()
        if hasher is not None:
            await hasher.keep_up()
        return len(data)

    async def _settle(self, entry: FileEntry) -> None:
        """Wait until the spool file holds every write answered so far. A write that
        failed there (a full disk) cut the file short before it: its error goes to
        ``entry.write_error``, for the next write or close to report."""
        spooler = entry.spooler
        if spooler is None:
            return
        await spooler.settle()
        if spooler.error is None or entry.spooler is not spooler:
            return
        entry.write_error = entry.lost = spooler.error
        if spooler.failed_at is not None and spooler.failed_at < entry.size and entry.spool:
            entry.size = spooler.failed_at
            os.truncate(entry.spool, entry.size)  # and a partial write past it
            entry.hasher = None
            self._changed(entry)
        self._stop_spooler(entry)  # the next write starts a new one

    def _stop_spooler(self, entry: FileEntry) -> None:
        if entry.spooler is not None:
            entry.spooler.close()
            entry.spooler = None
        self._writing.discard(entry)

    async def settle_all(self) -> None:
        """Land every answered write in its spool file (before the mount ends)."""
        for entry in list(self._writing):
            await self._settle(entry)

    async def truncate(self, entry: FileEntry, size: int) -> None:
        await self._quiet(entry, settle=True)
        self._truncate_settled(entry, size)

    def _truncate_settled(self, entry: FileEntry, size: int) -> None:
        """Truncate a file whose answered writes have all landed (no wait in between)."""
        if entry.spool is None:
            raise UploadError(errno.EACCES, f"{entry.label()} is committed and read-only")
        os.truncate(entry.spool, size)
        if size <= entry.size:
            entry.lost = None  # the file ends before the lost bytes: it holds what it should
        if size == 0:
            entry.write_error = None  # written anew: an old failure is no longer news
            self._restart_hash(entry)
        elif entry.hasher is None or size != entry.hasher.size:
            entry.hasher = None
        entry.size = size
        self._changed(entry)

    async def read_spool(self, entry: FileEntry, offset: int, size: int) -> bytes:
        await self._settle(entry)
        if entry.spool is None:  # committed and released while we waited
            raise UploadError(errno.EIO, f"{entry.label()}: its spool is gone")
        if entry.fd is not None:
            return os.pread(entry.fd, size, offset)
        with open(entry.spool, "rb") as file:
            file.seek(offset)
            return file.read(size)

    async def release(self, entry: FileEntry, *, wrote: bool) -> None:
        """A handle is gone. The last writer's lands its writes in the spool (a write that
        failed there stays in ``entry.write_error`` for the next close or fsync); the last
        handle drops the spool of a committed, unlinked or refused file, and a pending one
        keeps it (a failed upload: for fsync or the next mount)."""
        entry.opens -= 1
        if wrote:
            entry.writers -= 1
            if not entry.writers:
                try:
                    await self._settle(entry)
                except OSError as error:  # cutting the file after a failure failed too
                    log.warning("%s: %s", entry.label(), error)
                finally:
                    self._stop_spooler(entry)
        if entry.opens:
            return
        # A direct write whose content never matched its name, or that changed after its
        # last close (through a mapping): nobody can open this write again to close it.
        abandoned = entry.refused or not entry.closed
        if entry.expected is not None and not entry.committed and abandoned:
            entry.unlinked = True
        if entry.committed or entry.unlinked:
            self.spool.discard(entry)
        elif entry.fd is not None:
            os.close(entry.fd)
            entry.fd = None

    def remove(self, entry: Entry) -> None:
        """Take an entry out of its tree (a committed blob stays in the CAS), and journal
        it. An open file keeps its spool until released; its upload is abandoned."""
        where = self._where(entry)
        self._detach(entry)
        if where is not None and entry.parent is not None:
            self._journal({"rm": where[1], "i": where[0]})
            self.saved(entry.parent)

    def _detach(self, entry: Entry) -> None:
        if isinstance(entry, FileEntry):
            self.check_idle(entry)
            entry.unlinked = True
            self._stop_spooler(entry)  # what is still queued would only fill the disk
            self.spool.forget(entry)
            if not entry.opens:
                self.spool.discard(entry)
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
            self.spool.record(entry)
        elif isinstance(entry, DirEntry):
            for child in entry.children.values():
                self._rerecord(child)

    # -- finalize ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self.active += 1
        self.idle = trio.Event() if self.active == 1 else self.idle
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def finalize(self, entry: FileEntry) -> Digest:
        """Hash and upload a file unless the server has it; return its digest.

        On failure the file stays pending and spooled, so a later close, fsync or mount can
        finish it. A direct write whose content does not match its name fails with EIO, and
        one that lost bytes to a full spool with that error; either is discarded at its last
        release. A file that lost bytes commits what it holds and fails with the loss, at
        every commit until a truncate clears it (``FileEntry.lost``). Cancellation leaves
        the file pending.
        """
        async with entry.lock:
            entry.committing = trio.Event()
            try:
                return await self._finalize_locked(entry)
            finally:
                entry.committing.set()
                entry.committing = None

    async def _finalize_locked(self, entry: FileEntry) -> Digest:
        """``finalize`` with the file's lock held."""
        await self._settle(entry)
        if entry.digest is not None:
            return entry.digest
        if entry.spool is None:  # refused (a direct write's content) while we waited
            raise UploadError(errno.EIO, f"{entry.label()}: its content was refused")
        if entry.expected is not None and entry.lost is not None:
            entry.refused = True  # bytes of it are gone: it cannot match its name
            raise entry.lost
        with self._busy():
            if not entry.closed:
                entry.closed = True
                try:
                    self.spool.record(entry)
                except OSError as error:  # the spool disk is full: upload all the same
                    log.warning("%s: cannot mark it closed (%s)", entry.label(), error)
            try:
                digest = await self._upload(entry)
            except Exception:
                self.stats.failed += 1
                raise
        self.stats.committed += 1
        entry.digest = digest
        self.saved(entry)  # before the spool forgets it: a crash between uploads it again
        self.spool.forget(entry)  # committed: nothing for a later mount to do
        if not entry.opens:
            self.spool.discard(entry)
        failed = entry.write_error or entry.lost
        entry.write_error = None  # reported once; a loss until a truncate clears it
        if failed is not None:  # the bytes before the loss are committed
            raise failed
        return digest

    async def _upload(self, entry: FileEntry) -> Digest:
        assert entry.spool is not None
        spool = entry.spool
        function = entry.function
        digest = None
        if entry.hasher is not None and entry.hasher.size == entry.size:
            digest = await entry.hasher.digest()
        if digest is None:
            digest = await trio.to_thread.run_sync(digest_file, spool, function)
        if entry.expected is not None and digest != entry.expected:
            entry.refused = True
            if not entry.opens:  # a left-over: nobody can set it right any more
                self.spool.discard(entry)
                entry.unlinked = True
            raise UploadError(
                errno.EIO, f"content is {digest}, not {entry.expected}: nothing was stored"
            )
        if digest.size == 0:  # every server has it (REAPI): nothing to ask, nothing to log
            return digest
        client = self.clients[entry.instance]
        started = time.monotonic()
        if await client.find_missing([digest]):
            try:  # batch or stream: the client's one policy
                await client.store_file(digest, spool, cold=True)
            except ContentChanged:
                raise UploadError(errno.EIO, f"{entry.label()} changed during its upload") from None
            self.stats.uploaded_bytes += digest.size
            log.info(
                "uploaded %s as %s in %.2fs", entry.label(), digest, time.monotonic() - started
            )
        else:
            self.stats.deduplicated += 1
            log.debug("%s: the server already has %s", entry.label(), digest)
        return digest

    async def directory_digest(self, directory: DirEntry, instance: str) -> Digest:
        """The digest of a directory as a REAPI Directory, uploading what it refers to.

        Files still open for writing make it EBUSY.
        """
        if directory.digest is not None:
            return directory.digest
        entries: list[tuple[str, encode.Entry]] = []
        for name, child in list(directory.children.items()):
            if isinstance(child, FileEntry):
                if child.writers:
                    raise UploadError(errno.EBUSY, f"{child.path()} is still open for writing")
                digest = await self.finalize(child)
                entries.append((name, encode.FileEntry(digest, bool(child.mode & 0o111))))
            elif isinstance(child, DirEntry):
                digest = await self.directory_digest(child, instance)
                entries.append((name, encode.DirectoryEntry(digest)))
            elif isinstance(child, SymlinkEntry):
                entries.append((name, encode.SymlinkEntry(child.target)))
        digest = await self.clients[instance].upload_bytes(encode.directory_bytes(entries))
        directory.digest = digest
        return digest

    def _count_recovered(self, count: int) -> None:
        self.stats.recovered += count
