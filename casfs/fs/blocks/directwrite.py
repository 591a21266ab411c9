"""Writing a new block file of the disk cache around the page cache.

A block written to the disk cache is read again only after its memory copy is gone (a
re-read after eviction, or another mount, or after a remount), so the page-cache copy a
buffered write makes is mostly wasted, and on this VM it is dear: fresh page-cache pages
(``casfs/directio.py`` has the figures). Whole 4 KiB pages of a block therefore go to the
disk by ``O_DIRECT`` from one page-aligned staging buffer, and the rest (a short last
block's tail, the trailer) through the page cache. A file system that refuses
``O_DIRECT`` (tmpfs before Linux 6.6) gets buffered writes from then on; nothing fails for
want of it.

Blocking, for a worker thread. One staging buffer per writer, under a lock: writes to
the disk cache come from its one writer task anyway.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Sequence

from casfs.directio import ALIGNMENT

log = logging.getLogger("casfs.fs")


class BlockWriter:
    """Writes new files whole: their pages by ``O_DIRECT``, the rest buffered."""

    def __init__(self, *, direct: bool = True) -> None:
        self.direct = direct  # cleared when the file system refuses O_DIRECT
        self._lock = threading.Lock()
        self._staging: mmap.mmap | None = None

    def write(self, fd: int, pieces: Sequence[bytes | memoryview]) -> None:
        """Write ``pieces`` one after the other from offset 0 of ``fd`` (a new file opened
        for writing). Raises ``OSError`` (``ENOSPC``) with some prefix written."""
        first = memoryview(pieces[0]).cast("B")
        written = self._direct(fd, first[: len(first) // ALIGNMENT * ALIGNMENT])
        rest = [first[written:], *(memoryview(p).cast("B") for p in pieces[1:])]
        offset = written
        for piece in rest:
            while piece:
                done = os.pwrite(fd, piece, offset)
                piece, offset = piece[done:], offset + done

    def _direct(self, fd: int, body: memoryview) -> int:
        """Write ``body`` (whole pages) at offset 0 by ``O_DIRECT``; how much was written
        (0 when direct writes are off or refused)."""
        if not self.direct or not body:
            return 0
        with self._lock:
            if self._staging is None or len(self._staging) < len(body):
                if self._staging is not None:
                    self._staging.close()
                self._staging = mmap.mmap(-1, len(body))
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
                staging = memoryview(self._staging)
                try:
                    staging[: len(body)] = body
                    return os.pwrite(fd, staging[: len(body)], 0)
                finally:
                    staging.release()
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                log.debug("disk cache: no O_DIRECT here (%s); buffered writes", error)
                self.direct = False
                return 0
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
