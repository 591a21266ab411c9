"""Spool files and their metadata in ``<cache dir>/spool``: where a file of ``uploads/``
is written before it is committed, and what the next mount finds of it (``<id>.json``
beside each ``<id>.data``; see ``uploaddriver.py``). A lock file keeps one mount per cache
directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from casfs.fs.errors import MountError
from casfs.fs.uploadentries import FileEntry

log = logging.getLogger("casfs.fs")


class Spool:
    """Spool files and their metadata in ``<cache dir>/spool``, locked to one mount."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "spool"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        self._lock_fd = os.open(cache_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise MountError(f"cache directory {cache_dir} is in use by another mount") from None

        for orphan in self.dir.glob("*.json.tmp"):  # a crash in the middle of record()
            orphan.unlink()
        for data in self.dir.glob("*.data"):  # a crash between create() and record()
            if not data.with_suffix(".json").exists():
                data.unlink()

    def close(self) -> None:
        os.close(self._lock_fd)

    def create(self, entry: FileEntry) -> None:
        """Give ``entry`` a new, empty spool file and record where it belongs."""
        path = self.dir / f"{uuid.uuid4().hex}.data"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        entry.fd, entry.spool = fd, path
        entry.size = 0
        try:
            self.record(entry)
        except OSError:  # a full spool disk: leave neither a descriptor nor a file behind
            os.close(fd)
            path.unlink(missing_ok=True)
            entry.fd = entry.spool = None
            raise

    def record(self, entry: FileEntry) -> None:
        """(Re)write the metadata of a spooled file."""
        if entry.spool is None or entry.unlinked:
            return
        meta: dict[str, object] = {
            "instance": entry.instance,
            "path": entry.path() if entry.expected is None else None,
            "expected": str(entry.expected) if entry.expected is not None else None,
            "function": entry.function.name_lower,
            "mode": entry.mode,
            "closed": entry.closed,
        }
        if entry.uri is not None or entry.qualifiers:  # an asset name, pushed after its commit
            meta.update(uri=entry.uri, q=dict(entry.qualifiers))
        tmp = entry.spool.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.chmod(tmp, 0o600)
        tmp.replace(entry.spool.with_suffix(".json"))

    def forget(self, entry: FileEntry) -> None:
        """Drop the metadata, so that no later mount brings the file back."""
        if entry.spool is not None:
            entry.spool.with_suffix(".json").unlink(missing_ok=True)

    def discard(self, entry: FileEntry) -> None:
        """Remove a spool file and its metadata."""
        if entry.fd is not None:
            os.close(entry.fd)
            entry.fd = None
        if entry.spool is not None:
            self.forget(entry)
            entry.spool.unlink(missing_ok=True)
            entry.spool = None

    def leftovers(self) -> Iterator[tuple[Path, dict[str, object]]]:
        """Spool files a previous mount left behind, with their metadata."""
        for meta_path in sorted(self.dir.glob("*.json")):
            data = meta_path.with_suffix(".data")
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                log.warning("spool: unreadable metadata %s, left alone", meta_path)
                continue
            if data.exists():
                yield data, meta
            else:
                meta_path.unlink(missing_ok=True)
