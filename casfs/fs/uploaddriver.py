"""The trio driver of a file's lifecycle: it delivers each request to the file's
``FileState`` (``uploadmachine.py``, running the table of ``uploadstate.py``, where every
phase and transition is, with no I/O) and does what the answer says: spool, journal,
wait, or refuse with an errno. A part of ``Uploads`` (``uploads.py``), which sets its
spool, nursery and budgets; commits (a close's hash and upload) are its subclass's,
``UploadCommits`` in ``uploadcommit.py``.

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

Failure: an action that fails first of its step (a full disk at ``CREATE_SPOOL``, a write
that fails inline) leaves the file as it was (``FileState.restore``); one that fails
after others leaves the new phase, with what was done done.

Concurrency notes: everything runs in the mount's trio thread. Writes, truncates, opens
for writing and unlinks of a file being committed are answered WAIT by its
``FileState``: they wait for the commit (``wait_for_commits``), then deliver their event
again, with no checkpoint between the decision and the actions that carry it out (a sync
caller that cannot wait gets EBUSY), so nothing changes a file under its commit.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

import trio

from casfs.fs.behind import ByteBudget
from casfs.fs.hashbehind import HashBehind
from casfs.fs.spool import Spool
from casfs.fs.spoolwriter import SpoolWriter
from casfs.fs.uploadentries import Entry, FileEntry, UploadError
from casfs.fs.uploadmachine import FileState, Step
from casfs.fs.uploadstate import Do, LifecycleError

log = logging.getLogger("casfs.fs")

_WHY = {
    errno.EACCES: "is committed and read-only",
    errno.EBADF: "is not open for writing",
    errno.EBUSY: "is being uploaded",
}


class UploadDriver:
    """Open, write, truncate, read, release and commit files, as their ``FileState``
    decides, for ``Uploads``."""

    # Set by ``Uploads.__init__``.
    spool: Spool
    _nursery: trio.Nursery
    _hash_budget: ByteBudget
    _spool_budget: ByteBudget
    _writing: set[FileEntry]

    def saved(self, entry: Entry) -> None:
        """Journal an entry's name (``UploadJournal.saved``)."""
        raise NotImplementedError

    # -- steps ------------------------------------------------------------------------------

    def _step(
        self,
        entry: FileEntry,
        decide: Callable[[FileState], Step],
        *,
        size: int = 0,
        data: tuple[int, bytes] | None = None,
    ) -> Step:
        """Deliver an event (``decide``) and do the synchronous actions of its answer
        (SETTLE and UPLOAD are the caller's: they wait); raise its refusal or report. A
        WAIT here is EBUSY: callers that can wait do so first (``_quiet``)."""
        life = entry.life
        memo = life.memo()
        step = decide(life)
        if step.wait:
            raise UploadError(errno.EBUSY, f"{entry.label()} is being uploaded")
        if step.refuse is not None:
            why = _WHY.get(step.refuse, os.strerror(step.refuse))
            raise UploadError(step.refuse, f"{entry.label()} {why}")
        done = 0
        try:
            for action in step.actions:
                self._act(entry, action, size, data)
                done += 1
        except BaseException:
            if not done:
                life.restore(memo)
            raise
        if step.report is not None:
            raise step.report
        return step

    def _act(self, entry: FileEntry, action: Do, size: int, data: tuple[int, bytes] | None) -> None:
        """Do one action (``uploadstate.Do`` says what each is)."""
        if action is Do.CREATE_SPOOL:
            self._create_spool(entry)
            entry.modified()
        elif action is Do.OPEN_FD:
            if entry.fd is None and entry.spool is not None:
                entry.fd = os.open(entry.spool, os.O_RDWR)
        elif action is Do.TRUNCATE_SPOOL:
            self._truncate_spool(entry, size)
        elif action is Do.QUEUE_WRITE:
            assert data is not None
            self._queue_write(entry, *data)
        elif action is Do.RECORD:
            self.spool.record(entry)
        elif action is Do.MARK_CLOSED:
            try:
                self.spool.record(entry)
            except OSError as error:  # the spool disk is full: upload all the same
                log.warning("%s: cannot mark it closed (%s)", entry.label(), error)
        elif action is Do.JOURNAL:
            self.saved(entry)  # before the spool forgets it: a crash between uploads it again
        elif action is Do.FORGET:
            self.spool.forget(entry)
        elif action is Do.STOP_SPOOLER:
            self._stop_spooler(entry)
        elif action is Do.CLOSE_FD:
            if entry.fd is not None:
                os.close(entry.fd)
                entry.fd = None
        elif action is Do.DISCARD:
            self.spool.discard(entry)
        elif action not in (Do.SETTLE, Do.UPLOAD):
            raise LifecycleError(f"no way to do {action}")

    def check_idle(self, entry: FileEntry) -> None:
        """A guard for changes made with no checkpoint after ``wait_for_commits``."""
        if entry.life.committing:
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
        with no checkpoint after its last check, so the caller's step holds."""
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

    # -- descriptors and changes ------------------------------------------------------------

    async def open(self, entry: FileEntry, *, write: bool, truncate: bool) -> None:
        """Count an open handle. Writing a committed file whose spool is gone starts it over
        (only with O_TRUNC: casfs keeps no copy of committed content to modify). Opening
        for writing waits for a commit in progress."""
        if write:
            await self._quiet(entry, settle=True)  # no wait from here on: the step holds
        self._step(entry, lambda life: life.open(write=write, truncate=truncate))
        entry.life.opened(write=write)

    def _create_spool(self, entry: FileEntry) -> None:
        self.spool.create(entry)
        self._restart_hash(entry)

    def _restart_hash(self, entry: FileEntry) -> None:
        entry.hasher = HashBehind(entry.function, self._nursery, self._hash_budget)

    async def write(self, entry: FileEntry, offset: int, data: bytes) -> int:
        """Answer a write once it is queued for the spool file (``spoolwriter``); sequential
        writes are hashed behind too (``hashbehind``). The state is updated before any
        wait, so a close that comes meanwhile sees it all. An earlier write that failed
        after it was answered fails this one, once, and every later one past the end of the
        file that failure cut short (``FileState.lost``). A write during a commit waits
        for it."""
        await self._quiet(entry, settle=False)  # no wait from here until the write is queued
        if entry.fd is None or entry.spool is None:
            raise UploadError(errno.EBADF, f"{entry.label()} is not open for writing")
        size = entry.size
        try:
            self._step(entry, lambda life: life.write(offset, size), data=(offset, data))
        except UploadError as error:
            lost = entry.life.lost
            if lost is None or error.errno != (lost.errno or errno.EIO):
                raise
            raise UploadError(
                error.errno,
                f"{entry.label()}: bytes written before offset {offset} were lost at "
                f"{entry.size} ({lost.strerror or lost})",
            ) from None
        spooler, hasher = entry.spooler, entry.hasher
        assert spooler is not None
        await spooler.keep_up()
        if hasher is not None:
            await hasher.keep_up()
        return len(data)

    def _queue_write(self, entry: FileEntry, offset: int, data: bytes) -> None:
        """QUEUE_WRITE: a small write lands at once; a failure there leaves nothing of it
        past the end of the file."""
        assert entry.spool is not None
        spooler = entry.spooler
        if spooler is None:
            spooler = entry.spooler = SpoolWriter(entry.spool, self._nursery, self._spool_budget)
            self._writing.add(entry)
        try:
            spooler.submit(offset, data)
        except OSError:
            if offset + len(data) > entry.size:
                os.truncate(entry.spool, entry.size)
            raise
        hasher = entry.hasher
        if hasher is None or offset != hasher.size:
            entry.hasher = hasher = None  # not sequential: rehash at commit
        entry.size = max(entry.size, offset + len(data))
        entry.modified()
        if hasher is not None:
            hasher.feed_nowait(data)

    async def _settle(self, entry: FileEntry) -> None:
        """Wait until the spool file holds every write answered so far. A write that
        failed there (a full disk) cut the file short before it: its error is owed to the
        program (``FileState.spool_failed``)."""
        spooler = entry.spooler
        if spooler is None:
            return
        await spooler.settle()
        if spooler.error is None or entry.spooler is not spooler:
            return
        error, at = spooler.error, spooler.failed_at
        cut = at is not None and at < entry.size and entry.spool is not None
        if cut:
            entry.hasher = None
        self._step(entry, lambda life: life.spool_failed(error, cut=cut), size=at or 0)

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
        current = entry.size
        self._step(entry, lambda life: life.truncate(size, current), size=size)

    def _truncate_spool(self, entry: FileEntry, size: int) -> None:
        """TRUNCATE_SPOOL, once its answered writes have all landed."""
        assert entry.spool is not None
        os.truncate(entry.spool, size)
        if size == 0:
            self._restart_hash(entry)
        elif entry.hasher is None or size != entry.hasher.size:
            entry.hasher = None
        entry.size = size
        entry.modified()

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
        failed there is owed to the next close or fsync); the last handle drops the spool
        of a committed, unlinked or refused file, and a pending one keeps it (a failed
        upload: for fsync or the next mount)."""
        step = entry.life.release(wrote=wrote)
        if Do.SETTLE in step.actions:
            try:
                await self._settle(entry)
            except OSError as error:  # cutting the file after a failure failed too
                log.warning("%s: %s", entry.label(), error)
            finally:
                self._stop_spooler(entry)
        self._step(entry, FileState.unused)
