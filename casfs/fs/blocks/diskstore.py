"""Blocks on local disk, shared by every mount of one remote and instance: the files alone.

Blocking code only (the tier, ``disk.py``, calls it from worker threads); no trio here.

Layout, under the disk cache's root (``--disk-cache``, 0700 throughout)::

    <root>/<area>/<function>/<hash[:2]>/<hash>-<size>.<block_size>.<index>
    <root>/<area>/remote.txt      which remote and instance the area holds (for people)
    <root>/tmp/<pid>-<n>          blocks being written

``<area>`` is a hash of the remote's endpoint and the instance name, so every mount of the
same remote and instance shares the blocks and no other does (a mount of the embedded
store, which keeps no disk cache unless ``--disk-cache`` asks, is keyed by its store's
path). A file is the block's bytes
and a trailer (``TRAILER``: magic, the CRC-32 of the bytes, their length).

Crash safety, in two parts. A block is written to ``tmp/`` and renamed into place, so a
reader (this mount or another) never sees a file being written. And every read checks the
trailer: the length must be the one the block's place in the blob gives, and the CRC-32
must match. The rename alone is not enough: without an fsync before it, a crash of the
machine may leave a renamed file whose data never reached the disk (zeros, or short);
an fsync per block would cost a disk flush per MiB. The check catches that and a
truncated or altered file; a file that fails it is deleted and the block refetched.

Eviction is least recently used by bytes, across all areas of the root. The order is the
files' mtime, which a read sets (so two mounts see each other's use); the total is what
``scan`` finds, plus what this process wrote since. Another mount's writes since our last
scan are unseen, so the bound may be passed by what the other mounts wrote since their
own last scan; a scan every ``limit / 8`` bytes written keeps that small. Files may vanish
under any operation (another mount evicted them): that is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from casfs.digest import Digest
from casfs.fs.blocks.directwrite import BlockWriter

MAGIC = b"cfb1"
TRAILER = struct.Struct("<4sIQ")  # magic, crc32 of the block, its length
STALE_TMP = 3600.0  # seconds after which a temporary file is a crashed writer's


def area_name(endpoint: str, instance: str) -> str:
    """The directory of one remote's instance: the same for every mount of them."""
    return hashlib.sha256(f"{endpoint}\n{instance}".encode()).hexdigest()[:24]


def _private_dir(path: Path) -> None:
    """Make ``path`` 0700, and the parents it needs too (``mkdir(parents=True)`` would
    give them the umask's mode)."""
    if not path.parent.is_dir():
        _private_dir(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


@dataclass(frozen=True, slots=True)
class Area:
    """The blocks of one remote's instance, of one block size."""

    path: Path
    block_size: int

    def file(self, digest: Digest, index: int) -> Path:
        return (
            self.path
            / digest.function.name_lower
            / digest.hash[:2]
            / f"{digest.hash}-{digest.size}.{self.block_size}.{index}"
        )

    def length(self, digest: Digest, index: int) -> int:
        """How long the block is (the blob's last one is shorter)."""
        return max(0, min(self.block_size, digest.size - index * self.block_size))


class DiskStore:
    """One disk cache root: reading, writing and evicting block files (blocking calls)."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        self._tmp = root / "tmp"
        self._counter = itertools.count()
        self.total = 0  # bytes of block files, as of the last scan plus our writes
        self._written_since_scan = 0
        self._writer = BlockWriter()  # whole pages around the page cache (directwrite.py)

    def open(self) -> None:
        """Create the root private (0700) and learn its size; raises ``OSError``."""
        _private_dir(self.root)
        _private_dir(self._tmp)
        self.scan()

    def area(self, endpoint: str, instance: str, block_size: int) -> Area:
        path = self.root / area_name(endpoint, instance)
        _private_dir(path)
        label = path / "remote.txt"
        if not label.exists():
            fd = os.open(label, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"endpoint {endpoint}\ninstance {instance!r}\n")
        return Area(path, block_size)

    # -- reading ------------------------------------------------------------------------------

    def load(self, area: Area, digest: Digest, index: int) -> memoryview | None:
        """The block if its file is there and whole; a file that fails the check is
        deleted (None). Sets the file's mtime: it is the LRU order."""
        path = area.file(digest, index)
        length = area.length(digest, index)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
        except PermissionError:  # O_NOATIME on a file of another owner
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            buffer = bytearray(length + TRAILER.size + 1)
            got = os.readv(fd, [buffer])
            if got == length + TRAILER.size:
                magic, crc, size = TRAILER.unpack_from(buffer, length)
                view = memoryview(buffer)[:length]
                if magic == MAGIC and size == length and zlib.crc32(view) == crc:
                    with contextlib.suppress(OSError):
                        os.utime(fd)
                    return view
        finally:
            os.close(fd)
        self.discard(path)
        raise CorruptBlock(f"{path}: torn or altered (deleted)")

    def will_need(self, area: Area, digest: Digest, indexes: Sequence[int]) -> None:
        """Ask the kernel to start reading these blocks' files (``POSIX_FADV_WILLNEED``),
        so the reads that follow find them coming: each block is a file of its own, which
        the kernel's readahead never looks past. Files not there are skipped."""
        for index in indexes:
            try:
                fd = os.open(area.file(digest, index), os.O_RDONLY | os.O_NOATIME)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    # -- writing ------------------------------------------------------------------------------

    def save(self, area: Area, digest: Digest, index: int, data: bytes | memoryview) -> int:
        """Write a block (to ``tmp/``, then renamed into place); returns the bytes added.
        A block already there is left alone (0)."""
        path = area.file(digest, index)
        if path.exists():
            return 0
        tmp = self._tmp / f"{os.getpid()}-{next(self._counter)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            trailer = TRAILER.pack(MAGIC, zlib.crc32(data), len(data))
            self._writer.write(fd, [data, trailer])
        except BaseException:
            os.close(fd)
            self.discard(tmp)
            raise
        os.close(fd)
        try:
            try:
                os.rename(tmp, path)
            except FileNotFoundError:  # its directory is new
                _private_dir(path.parent)
                os.rename(tmp, path)
        except BaseException:
            self.discard(tmp)
            raise
        added = len(data) + TRAILER.size
        self.total += added
        self._written_since_scan += added
        return added

    def discard(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def drop(self, area: Area, digest: Digest) -> None:
        """Delete every block of a blob in an area (it was found corrupt)."""
        index = 0
        while area.length(digest, index) > 0:
            self.discard(area.file(digest, index))
            index += 1

    # -- size ---------------------------------------------------------------------------------

    def over(self) -> bool:
        """Whether it is time for ``evict``: past the limit, or much written since a scan."""
        return self.total > self.limit or self._written_since_scan > self.limit // 8

    def scan(self) -> list[tuple[float, int, str]]:
        """Every block file as ``(mtime, size, path)``, oldest first; sets ``total``.
        Removes temporary files that crashed writers left."""
        files: list[tuple[float, int, str]] = []
        now = time.time()
        for top, _dirs, names in os.walk(self.root):
            is_tmp = top == str(self._tmp)
            for name in names:
                path = os.path.join(top, name)
                try:
                    info = os.stat(path)
                except FileNotFoundError:
                    continue
                if is_tmp:
                    if now - info.st_mtime > STALE_TMP:
                        self.discard(Path(path))
                elif name != "remote.txt":
                    files.append((info.st_mtime, info.st_size, path))
        files.sort()
        self.total = sum(size for _, size, _ in files)
        self._written_since_scan = 0
        return files

    def evict(self) -> int:
        """Delete the least recently used files until the root is under 90% of its limit;
        returns how many went. Files another mount removed first are skipped."""
        files = self.scan()
        target = self.limit * 9 // 10
        evicted = 0
        for _mtime, size, path in files:
            if self.total <= target:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            else:
                evicted += 1
            self.total -= size
        return evicted


class CorruptBlock(Exception):
    """A block file failed its check (and was deleted)."""
