"""Writing a spool file behind the FUSE writes that fill it.

``cp`` waits for the answer to every write before it sends the next, so whatever a write
handler does before answering adds up over the whole file. The spool file is written once
and read once, by the upload, so it is written around the page cache (``casfs.directio``)
and, since a direct write takes as long as the disk does, in a worker thread while the
program sends its next write: a write is answered once its bytes are queued here.

Concurrency notes:

- ``submit`` runs in the trio thread and keeps the writes in the order they came; one
  worker task at most per writer takes them in that order, in batches, to a thread, so
  the file ends up as if the writes had been made one by one.
- The queued bytes count against a ``ByteBudget`` shared by every spool writer of the
  mount: past its limit the caller waits (``keep_up``), so memory stays bounded however
  many files are written at once.
- A write that fails (``ENOSPC``) stops the writer: what was queued after it is dropped,
  ``error`` holds the failure and ``failed_at`` the lowest offset among the failed write
  and the dropped ones (for sequential writes, where the file's good bytes end). The
  caller reports the error to the program once (at its next write or at ``close``), as the
  kernel does for a failed writeback.
- A batch leaves the queue when its thread starts: the queue holds only what no thread
  has, and each byte is given back to the budget once, by whoever holds it.
- The writer has descriptors of its own, so the caller may close its descriptor at any
  time. ``close`` drops what is still queued; a batch already in its thread finishes
  first, and the descriptors are closed after it.
- If the worker is cancelled (the mount is ending) the queued writes are lost, as a page
  cache's dirty pages are in a crash; the mount settles its writers before it ends.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from casfs.directio import DirectWriter
from casfs.fs.behind import Behind, ByteBudget

INLINE_BYTES = 64 << 10


class SpoolWriter(Behind[tuple[int, bytes]]):
    """The writes of one spool file, landed in order by a worker thread."""

    def __init__(self, path: Path, nursery: trio.Nursery, budget: ByteBudget) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._writer = DirectWriter(path, self._fd)
        except OSError:
            os.close(self._fd)
            raise
        super().__init__(nursery, budget)
        self._closed = False
        self.error: OSError | None = None
        self.failed_at: int | None = None  # after a failure: the lowest offset not landed

    def submit(self, offset: int, data: bytes) -> None:
        """Queue a write (the caller checks ``error`` first; a write queued after a failure
        is dropped like the others queued then). A small write with nothing queued lands
        at once, in this thread: a thread hop would cost more, and a file of a few writes
        is then whole in its spool when its writes are answered. Its failure raises
        ``OSError`` here, with some of it possibly written."""
        if self._closed:
            raise OSError(errno.EBADF, "the spool writer is closed")
        if not self._working and self.error is None and len(data) <= INLINE_BYTES:
            self._writer.pwrite(data, offset)
            return
        self._enqueue((offset, data), len(data))

    async def settle(self) -> None:
        """Wait until every write queued so far has landed or failed."""
        await self._idle()

    def close(self) -> None:
        """Drop what is still queued and close the descriptors (once no batch runs)."""
        self._closed = True
        self._drop_queue()
        if not self._working:
            self._close_files()

    async def _work(self) -> None:
        try:
            while self._queue and self.error is None:
                batch, self._queue = self._queue, []
                try:
                    await trio.to_thread.run_sync(self._land, batch)
                finally:
                    self._budget.give_back(sum(len(data) for _, data in batch))
                self._wake()
        finally:
            self._working = False
            self._drop_queue()
            if self._closed:
                self._close_files()
            self._wake()

    def _land(self, batch: list[tuple[int, bytes]]) -> None:  # in a worker thread
        for index, (offset, data) in enumerate(batch):
            try:
                self._writer.pwrite(data, offset)
            except OSError as error:
                self._failed(error, [at for at, _ in batch[index:]])
                return

    def _failed(self, error: OSError, offsets: list[int]) -> None:
        self.error = error
        lowest = min(offsets, default=None)
        if lowest is not None and (self.failed_at is None or lowest < self.failed_at):
            self.failed_at = lowest

    def _drop_queue(self) -> None:
        if self._queue:
            if self.error is not None:  # dropped after a failure: the cut goes below them
                self._failed(self.error, [at for at, _ in self._queue])
            self._budget.give_back(sum(len(data) for _, data in self._queue))
            self._queue.clear()

    def _close_files(self) -> None:
        if self._fd >= 0:
            self._writer.close()
            os.close(self._fd)
            self._fd = -1
