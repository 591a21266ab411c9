"""An append-only journal of JSON records over a snapshot, kept in one directory.

The ``uploads/`` trees use it to keep their names across mounts (see ``uploads.py``); it
knows nothing of what the records mean. The directory holds:

- ``snapshot``: a first line ``{"generation": N}``, then one record per line: the state
  the journal starts from. Written whole to ``snapshot.tmp``, fsynced, then renamed over
  the old one, so a crash leaves either the old snapshot or the new one.
- ``journal.N``: the records appended since the snapshot of generation N, one per line.
  Other generations' journals are left-overs of a crash during a compaction: the snapshot
  that replaced them already holds what they said, so they are deleted, never replayed.

Each record is appended with one ``write()`` and no fsync: a killed process (SIGKILL,
a crash) loses nothing that was written, since the kernel's page cache keeps it; a power
loss may lose the records since the last compaction, whose snapshot was fsynced. A line
that does not parse (a record torn by a power loss or a full disk) is logged and skipped.
A failed append (a full disk) is cut back off the file, logged once, and turns further
appends off: the journal is ``stale`` until the next compaction writes the whole state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("casfs.fs")

Record = dict[str, Any]


class Journal:
    """One directory's snapshot and journal; used by one mount at a time (the caller
    holds the cache directory's lock)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.generation = 0
        self.appended = 0  # records in the journal since the snapshot
        # Appends are not recorded: none opened the journal yet, or one failed. Only a
        # compaction brings the files up to date.
        self.stale = True
        self._fd: int | None = None
        self._size = 0  # bytes in the journal file: a failed append is cut back to it
        self._corrupt = False  # the snapshot had lines that did not parse

    @property
    def _snapshot(self) -> Path:
        return self.dir / "snapshot"

    def _journal(self, generation: int) -> Path:
        return self.dir / f"journal.{generation}"

    def load(self) -> Iterator[Record]:
        """The snapshot's records, then the journal's, in the order they were written.
        Lines that do not parse as a JSON object are logged and skipped."""
        self.generation = 0
        if self._snapshot.exists():
            lines = self._lines(self._snapshot)
            header = next(lines, None)
            generation = header.get("generation") if header is not None else None
            if not isinstance(generation, int):
                log.warning("names: %s has no generation; its records are ignored", self._snapshot)
                self._corrupt = True
                return
            self.generation = generation
            yield from lines
        journal = self._journal(self.generation)
        if journal.exists():
            yield from self._lines(journal)

    def _lines(self, path: Path) -> Iterator[Record]:
        with open(path, "rb") as file:
            for number, line in enumerate(file, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    log.warning("names: %s line %d is not a record; skipped", path.name, number)
                    self._corrupt |= path == self._snapshot
                    continue
                yield record

    def append(self, record: Record) -> None:
        """Add one record (a no-op while the journal is stale). A failure is logged, not
        raised: the change it records is made."""
        if self._fd is None or self.stale:
            return
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as error:
            log.warning("names: cannot journal a change (%s); kept until unmount", error)
            self.stale = True
            with contextlib.suppress(OSError):  # else the torn line is skipped when read
                os.ftruncate(self._fd, self._size)
            return
        self._size += written
        self.appended += 1

    def compact(self, records: Iterable[Record]) -> None:
        """Write ``records`` (the whole state) as the next generation's snapshot and start
        its empty journal. On failure (``OSError``) the old snapshot and journal stay, and
        appends go on to the old journal unless it is stale."""
        generation = self.generation + 1
        tmp = self.dir / "snapshot.tmp"
        with open(tmp, "wb") as file:
            file.write(json.dumps({"generation": generation}).encode() + b"\n")
            for record in records:
                file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        if self._corrupt:  # keep what could not be read, for whoever wants to look
            self._snapshot.replace(self.dir / "snapshot.corrupt")
            self._corrupt = False
        tmp.replace(self._snapshot)
        self._fsync_dir()
        fd = os.open(
            self._journal(generation), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
        )
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._size = fd, 0
        self.generation, self.appended, self.stale = generation, 0, False
        for old in self.dir.glob("journal.*"):
            if old.name != f"journal.{generation}":
                old.unlink(missing_ok=True)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
