"""Commits: every close of a changed file (and every fsync) hashes it and uploads it
unless the server has it, as its ``FileState`` decides (COMMIT, SETTLED, then UPLOADED,
UPLOAD_FAILED or MISMATCH; ``uploadstate.py``). A part of ``Uploads`` (``uploads.py``):
``UploadCommits`` is the driver (``uploaddriver.py``) with commits, and uses the clients
and counters ``Uploads`` sets.

The digest comes from the running hash when the writes were sequential, else from a
hash of the spool in a worker thread; then FindMissingBlobs, then BatchUpdateBlobs for a
small blob or a resumable ByteStream Write (``CasClient.store_file``, the client's one
rule). An empty file needs no call.

Concurrency notes: runs in the mount's trio thread. Each file has a ``trio.Lock`` held
while it is committed, so concurrent closes upload it once; its ``committing`` event is
set while the commit runs, and changes wait on that (``UploadDriver.wait_for_commits``).
``active`` counts commits in progress, so that an unmount can wait for them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import trio

from casfs.cas.errors import ContentChanged
from casfs.cas.remote import BlobRemote
from casfs.digest import Digest, digest_file
from casfs.fs.uploaddriver import UploadDriver
from casfs.fs.uploadentries import FileEntry, UploadError
from casfs.fs.uploadmachine import FileState, Step
from casfs.fs.uploadstate import Phase

log = logging.getLogger("casfs.fs")


@dataclass
class UploadStats:
    """Commits so far, for ``casfs status`` and the metrics (in flight:
    ``Uploads.active``)."""

    committed: int = 0  # ended with the blob in the CAS
    deduplicated: int = 0  # of those, the server had the blob already: nothing was sent
    failed: int = 0  # ended in an error; the file stays spooled
    recovered: int = 0  # left by an earlier mount and brought back to be finished
    uploaded_bytes: int = 0  # blob bytes sent to the CAS


class UploadCommits(UploadDriver):
    """The driver with commits (``finalize``), for ``Uploads``."""

    # Set by ``Uploads.__init__``.
    clients: Mapping[str, BlobRemote]
    stats: UploadStats
    active: int
    idle: trio.Event

    # -- commits ----------------------------------------------------------------------------

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
        """Commit a file: hash and upload it unless the server has it; return its digest.

        On failure the file stays pending and spooled, so a later close, fsync or mount can
        finish it. A direct write whose content does not match its name fails with EIO, and
        one that lost bytes to a full spool with that error; either is discarded at its last
        release. A file that lost bytes commits what it holds and fails with the loss, at
        every commit until a truncate clears it (``FileState.lost``). Cancellation leaves
        the file pending.
        """
        async with entry.lock:
            step = self._step(entry, FileState.commit)
            if entry.life.phase is not Phase.SETTLING:  # committed, or out of its tree
                if entry.digest is None:
                    raise UploadError(errno.EIO, f"{entry.label()}: nothing to commit")
                return entry.digest
            entry.committing = trio.Event()
            try:
                return await self._commit(entry, step)
            finally:
                entry.committing.set()
                entry.committing = None

    async def _commit(self, entry: FileEntry, step: Step) -> Digest:
        """``finalize`` in SETTLING, with the file's lock held."""
        life = entry.life
        try:
            await self._settle(entry)
            self._step(entry, FileState.settled)  # SETTLED_SHORT raises its loss
        except BaseException:
            if life.phase is Phase.SETTLING:
                life.aborted()
            raise
        with self._busy():
            try:
                digest = await self._upload(entry)
            except BaseException as error:
                if life.phase is Phase.UPLOADING:  # not refused for its content
                    self._step(entry, FileState.upload_failed)
                if isinstance(error, Exception):
                    self.stats.failed += 1
                raise
        self.stats.committed += 1
        self._step(entry, lambda life: life.uploaded(digest))  # raises a loss, once committed
        return digest

    async def _upload(self, entry: FileEntry) -> Digest:
        """UPLOAD: the digest (from the running hash, or a hash of the spool), checked
        against a direct write's name; FindMissingBlobs; the bytes if they are missing."""
        if entry.spool is None:  # cannot be: a spool goes only at a last release
            raise UploadError(errno.EIO, f"{entry.label()}: its spool is gone")
        spool = entry.spool
        function = entry.function
        digest = None
        if entry.hasher is not None and entry.hasher.size == entry.size:
            digest = await entry.hasher.digest()
        if digest is None:
            digest = await trio.to_thread.run_sync(digest_file, spool, function)
        if entry.expected is not None and digest != entry.expected:
            self._step(entry, FileState.mismatch)
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
