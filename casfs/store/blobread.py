"""Reading a stored blob's range in pieces for ByteStream Read, and other ways of
reading a cold one, kept for measurement.

By default (``CASFS_COLD_READ`` unset or ``off``) every range is read the ordinary way,
one ``read`` per 1 MiB piece in the sending thread: nothing else measured reliably faster
with ``python -m bench.server_cold`` (docs/performance.md), and that path already serves
a cold 512 MiB blob 2.5-5x as fast as buildbox-casd.

``buffered`` and ``direct`` read a cold blob with the next piece read by a helper thread
while this one is sent (``direct``: by ``O_DIRECT``, around the page cache, as the write
side does; for reads it was slower here: ``dd`` of a store file ran at 446 MB/s
``iflag=direct`` against 806 buffered). Whether a blob is cold is asked of the kernel
without reading anything: ``mincore`` of a one-page mapping of the range's first and of
its last page, 50-60 microseconds, skipped for ranges under ``COLD_MIN``. (A ``preadv``
with ``RWF_NOWAIT`` was tried and dropped: on this kernel it starts the readahead it
declines to wait for, and may then answer with the data.) The file is reopened through
``/proc/self/fd``, so a blob evicted (unlinked) after it was opened is still read whole,
as with the ordinary path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
from collections.abc import Generator
from typing import BinaryIO

from casfs.directio import DirectReader

log = logging.getLogger("casfs.store")

# Reads shorter than this take the ordinary path: a helper thread is not worth it.
COLD_MIN = 4 << 20
# How many pieces are read ahead of the one being sent, each in a helper thread (4 lost to
# the ordinary path in the same run: 325 against 506 MB/s).
AHEAD = 1
# For measurements (bench.server_cold --also): "buffered" (the default), "direct" (the
# same helper threads by O_DIRECT) or "off" (every read the ordinary way).
_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MODE = os.environ.get("CASFS_COLD_READ", "buffered")


def is_cached(fd: int, offset: int, length: int) -> bool:
    """Whether the pages at the start and the end of ``[offset, offset + length)`` are in
    the page cache, by ``mincore`` of a one-page mapping of each: nothing is read from the
    disk. True where the kernel cannot tell (no mapping of this file)."""
    for at in (offset, offset + length - 1):
        page = at - at % _PAGE
        address = _libc.mmap(None, _PAGE, mmap.PROT_READ, mmap.MAP_SHARED, fd, page)
        if address in (None, _MAP_FAILED):
            return True
        try:
            vector = ctypes.c_ubyte(0)
            if _libc.mincore(ctypes.c_void_p(address), _PAGE, ctypes.byref(vector)) != 0:
                return True
        finally:
            _libc.munmap(ctypes.c_void_p(address), _PAGE)
        if not vector.value & 1:
            return False
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
    try:
        reader = DirectReader(f"/proc/self/fd/{fd}", direct=_MODE == "direct")
    except OSError as error:  # no /proc: the ordinary path, as before
        log.debug("cannot reopen fd %d (%s); reading it the ordinary way", fd, error)
        yield from _ordinary(file, offset, length, size)
        return
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
