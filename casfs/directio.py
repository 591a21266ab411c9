"""Writing a file that is written once and read once, without filling the page cache.

Two files are written once and read once: the ``.part`` file ``casfs serve`` writes an
upload to (hashed as it arrives, then renamed into the store), and the mount's spool file
(read back by the upload). Buffered writes copy every byte into new page-cache pages
first. On the development VM (Firecracker, whose balloon takes back the guest's free
pages) a fresh page also costs a fault in the host, and that copy
(``copy_folio_from_iter_atomic``) was 42% of the server's CPU while it took an upload: a
buffered ``dd`` of 1 GiB after ``drop_caches`` ran at 272 MB/s, the same with
``oflag=direct`` at 1.3-1.8 GB/s. Whole aligned blocks therefore go to the disk directly
(``O_DIRECT``), as databases write their logs; what is not aligned (the head of a write
that starts inside a block, the tail of a file) takes the ordinary path. ``DirectReader``
reads such a file back the same way.

A direct write returns only once the device has the data, so the mount does not make
``cp`` wait for it: its spool writes go through a queue and a worker thread
(``casfs.fs.spoolwriter``). Answered after the write, the same spool was slower than a
buffered one (the write phase of 1 GiB went from 2.5 to 3.2 s).

Linux keeps the two paths coherent for one file: a direct write first writes back and
drops cached pages in its range, so a later buffered read sees the bytes. A file system
that refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some FUSE file systems) gets buffered
writes only, as does a write the device refuses (``EINVAL``): nothing fails for want of
direct I/O.

Not thread-safe: one ``DirectWriter`` per file, used by one thread at a time (the
server's handler of an upload's stream; the mount's spool writer).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import logging
import mmap
import os
from collections.abc import Generator
from pathlib import Path

log = logging.getLogger("casfs.directio")

ALIGNMENT = 4096  # the file offset, length and memory alignment O_DIRECT asks for
_BOUNCE_BYTES = 1 << 20  # the aligned staging buffer; larger writes go through it in turns


class DirectWriter:
    """Writes at offsets of one file: aligned whole blocks by ``O_DIRECT``, the rest
    through ``fd`` (the caller's descriptor, opened for writing; never closed here)."""

    def __init__(self, path: Path | str, fd: int) -> None:
        self._fd = fd
        self._direct_fd: int | None = None
        self._bounce: mmap.mmap | None = None
        self._bounce_view: memoryview | None = None
        try:
            self._direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            log.debug("%s: no O_DIRECT here (%s); buffered writes only", path, error)

    @property
    def direct(self) -> bool:
        """Whether aligned blocks still bypass the page cache."""
        return self._direct_fd is not None

    def pwrite(self, data: bytes | memoryview, offset: int) -> int:
        """Write all of ``data`` at ``offset``; returns ``len(data)``. Raises ``OSError``
        (``ENOSPC`` for a full disk) with the file holding some prefix of the write."""
        view = memoryview(data).cast("B")
        head = min(len(view), -offset % ALIGNMENT)
        body = (len(view) - head) // ALIGNMENT * ALIGNMENT
        if self._direct_fd is None or body == 0:
            self._buffered(view, offset)
            return len(view)
        self._buffered(view[:head], offset)
        self._aligned(self._direct_fd, view[head : head + body], offset + head)
        self._buffered(view[head + body :], offset + head + body)
        return len(view)

    def _buffered(self, view: memoryview, offset: int) -> None:
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _aligned(self, direct_fd: int, view: memoryview, offset: int) -> None:
        """Write whole blocks through the page-aligned staging buffer. A refusal
        (``EINVAL``) or a short write hands the rest to the buffered path."""
        if self._bounce_view is None:
            self._bounce = mmap.mmap(-1, _BOUNCE_BYTES)
            self._bounce_view = memoryview(self._bounce)
        bounce = self._bounce_view
        while view:
            piece = min(len(view), _BOUNCE_BYTES)
            bounce[:piece] = view[:piece]
            try:
                written = os.pwrite(direct_fd, bounce[:piece], offset)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                log.debug("O_DIRECT write refused (%s); buffered writes from now on", error)
                self._close_direct()
                written = 0
            if written < piece:
                self._buffered(view[written:], offset + written)
                return
            view, offset = view[piece:], offset + piece

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def close(self) -> None:
        """Close the ``O_DIRECT`` descriptor and drop the staging buffer (not ``fd``)."""
        self._close_direct()
        if self._bounce_view is not None:
            self._bounce_view.release()
            self._bounce_view = None
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None


class DirectReader:
    """Reads a file that is not in the page cache (one written by ``DirectWriter``) without
    bringing it in: aligned reads by ``O_DIRECT`` into staging buffers, copied out.

    A direct read waits for the device (about 0.7 ms per MiB here) and, unlike a buffered
    one, gets no readahead from the kernel, so ``chunks`` reads the next piece in a thread
    of its own while the caller sends this one. Without ``direct``, on a file system that
    refuses ``O_DIRECT``, or at an unaligned offset, it reads the ordinary way.

    Not thread-safe (its own helper thread aside); ``close`` when done.
    """

    def __init__(self, path: os.PathLike[str] | str, *, direct: bool = True) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._direct_fd: int | None = None
        self._bounces: list[mmap.mmap] = []
        if not direct:
            return
        try:
            self._direct_fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as error:
            if error.errno != errno.EINVAL:
                os.close(self._fd)
                raise

    def pread(self, length: int, offset: int, *, bounce: int = 0) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file), read
        through staging buffer number ``bounce``."""
        direct_fd = self._direct_fd
        if direct_fd is None or offset % ALIGNMENT or length > _BOUNCE_BYTES:
            return os.pread(self._fd, length, offset)
        while len(self._bounces) <= bounce:
            self._bounces.append(mmap.mmap(-1, _BOUNCE_BYTES))
        buffer = self._bounces[bounce]
        padded = -(-length // ALIGNMENT) * ALIGNMENT
        view = memoryview(buffer)
        try:
            got = os.preadv(direct_fd, [view[:padded]], offset)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            return os.pread(self._fd, length, offset)  # refused here: this read only
        finally:
            view.release()
        return buffer[: min(got, length)]

    def chunks(
        self, offset: int, end: int, size: int, *, ahead: int | None = None
    ) -> Generator[bytes, None, None]:
        """The bytes from ``offset`` to ``end`` (or to the end of the file) in pieces of
        ``size``; while the caller has one piece, the next ``ahead`` are being read, each in
        a helper thread of its own (``None``: one ahead for direct reads, none for buffered
        ones). A piece shorter than asked ends it (the file ended early). Closing the
        generator early waits for the reads in flight, then returns."""
        if ahead is None:
            ahead = 0 if self._direct_fd is None else 1
        if ahead == 0:
            while offset < end:
                piece = os.pread(self._fd, min(size, end - offset), offset)
                yield piece
                if len(piece) < min(size, end - offset):
                    return
                offset += len(piece)
            return
        with concurrent.futures.ThreadPoolExecutor(ahead, "casfs-readahead") as pool:
            # Piece number n uses staging buffer n % ahead: it is free again once piece n's
            # read has returned its copy, which is before piece n + ahead is asked for.
            flight: collections.deque[tuple[int, concurrent.futures.Future[bytes]]] = (
                collections.deque()
            )
            asked = offset
            number = 0
            while len(self._bounces) < ahead and self._direct_fd is not None:
                self._bounces.append(mmap.mmap(-1, _BOUNCE_BYTES))

            def fill() -> None:
                nonlocal asked, number
                while asked < end and len(flight) < ahead:
                    # an unaligned start is read up to a block boundary, then whole blocks
                    step = size - asked % ALIGNMENT if size > ALIGNMENT else size
                    wanted = min(step, end - asked)
                    future = pool.submit(self.pread, wanted, asked, bounce=number % ahead)
                    flight.append((wanted, future))
                    asked += wanted
                    number += 1

            try:
                fill()
                while flight:
                    wanted, future = flight.popleft()
                    piece = future.result()
                    if len(piece) == wanted:
                        fill()  # before the caller has this piece: the next is being read
                    yield piece
                    if len(piece) < wanted:
                        return
            finally:
                for _, future in flight:
                    future.cancel()

    def close(self) -> None:
        """Close the descriptors and drop the staging buffers."""
        for fd in (self._direct_fd, self._fd):
            if fd is not None:
                os.close(fd)
        self._direct_fd = None
        for buffer in self._bounces:
            buffer.close()
        self._bounces.clear()
