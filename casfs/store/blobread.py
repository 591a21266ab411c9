"""Reading a stored blob's range in pieces, around the page cache when it is cold.

A blob that is not in the page cache, read the ordinary way, is copied into fresh
page-cache pages first; on the development VM such pages are dear (``casfs.directio``
says why). ``pieces`` therefore asks the kernel first whether the start of the range is
cached, without reading anything from the disk (``preadv`` with ``RWF_NOWAIT``, which fails
with ``EAGAIN`` rather than start I/O): a cached (hot) blob is read as before, a cold one
by ``DirectReader`` with reads in flight ahead of the caller.

The file is reopened through ``/proc/self/fd``, so a blob evicted (unlinked) after it was
opened is still read whole, as with the ordinary path.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Generator
from typing import BinaryIO

from casfs.directio import DirectReader

log = logging.getLogger("casfs.store")

# Reads shorter than this take the ordinary path: a helper thread is not worth it.
COLD_MIN = 4 << 20
# How many pieces are read ahead of the one being sent.
AHEAD = 4
_MODE = os.environ.get("CASFS_COLDREAD", "direct")


def is_cached(fd: int, offset: int, length: int) -> bool:
    """Whether the pages at the start and the end of ``[offset, offset + length)`` are in
    the page cache; asks without reading from the disk. True where the kernel cannot tell
    (no ``RWF_NOWAIT`` for this file)."""
    probe = bytearray(1)
    for at in (offset, offset + length - 1):
        try:
            got = os.preadv(fd, [probe], at, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return True
            raise
        if got == 0:
            return True  # past the end (the file is shorter): the ordinary path says so
    return True


def pieces(file: BinaryIO, offset: int, length: int, size: int) -> Generator[bytes, None, None]:
    """``length`` bytes of ``file`` from ``offset`` in pieces of at most ``size`` (the
    last may be shorter; fewer bytes in all only if the file is shorter). Closing the
    generator early stops the reads in flight first. Raises ``OSError`` as ``read`` does."""
    try:
        fd = file.fileno()
    except (OSError, AttributeError, ValueError):
        fd = -1  # not a file (the empty blob's BytesIO)
    if fd < 0 or length < COLD_MIN or _MODE == "off" or is_cached(fd, offset, length):
        yield from _ordinary(file, offset, length, size)
        return
    reader = DirectReader(f"/proc/self/fd/{fd}", direct=_MODE == "direct")
    try:
        chunks = reader.chunks(offset, offset + length, size, ahead=AHEAD)
        try:
            yield from chunks
        finally:
            chunks.close()
    finally:
        reader.close()


def _ordinary(file: BinaryIO, offset: int, length: int, size: int) -> Generator[bytes, None, None]:
    file.seek(offset)
    while length > 0:
        piece = file.read(min(size, length))
        if not piece:
            return
        length -= len(piece)
        yield piece

