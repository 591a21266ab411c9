"""The store's asset index (``store/assets.py``'s SQLite file), read-only, for listings
of ``assets/``: which names are below a prefix, and which schemes there are. Only live
rows (not expired) count. No FUSE in here; ``fs/assetcatalog.py`` uses it.

Concurrency notes: every read runs in a worker thread (``trio.to_thread.run_sync``),
one at a time (a ``CapacityLimiter`` of 1: one SQLite connection, never used by two
threads at once), so the mount's trio thread never waits on SQLite or on the disk under
it. A listing is one call: its queries (up to ``MAX_LISTING`` short indexed ones, a
skip-scan) run in that one thread call. Cancelled, the caller waits for the call in its
thread to finish (at most that many indexed queries) and drops its rows: a query is never
abandoned half-read, so the next call finds the connection idle. A failed read (the file
gone, locked past its busy timeout, corrupt) is logged and reads as no rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from casfs.digest import Digest, DigestFunction
from casfs.store.assets import INDEX_NAME

log = logging.getLogger("casfs.fs")

MAX_LISTING = 10_000  # names a listing shows from the index
_LIVE = "(expire_at IS NULL OR expire_at > ?)"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    """One asset: its URI, whether it names a tree, its digest and qualifiers."""

    uri: str
    digest: Digest
    directory: bool = False
    qualifiers: Mapping[str, str] = field(default_factory=dict)


class CatalogIndex:
    """The asset index under ``root`` (a store directory), opened at its first read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.readable = True  # False once opening it failed: never tried again
        self._db: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)

    @property
    def path(self) -> Path:
        return self.root / INDEX_NAME

    def close(self) -> None:
        """Close the connection (no read may be running: call it once reads are done)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _in_thread(self, read: Callable[[sqlite3.Connection], T], empty: T) -> T:
        """``read`` of the open connection in a worker thread, one at a time; ``empty``
        without a readable index or when the read fails (logged)."""

        def run() -> T:
            db = self._open()
            if db is None:
                return empty
            try:
                return read(db)
            except sqlite3.Error as error:
                log.warning("assets/: reading the catalog: %s", error)
                return empty

        if not self.readable:
            return empty
        rows = await trio.to_thread.run_sync(run, limiter=self._limiter)
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled meanwhile: rows dropped
        return rows

    def _open(self) -> sqlite3.Connection | None:
        if self._db is None and self.readable:
            if not self.path.exists():
                return None  # not yet: the store may make it later
            try:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
                self._db.execute("PRAGMA busy_timeout = 1000")
            except sqlite3.Error as error:
                log.warning("assets/: cannot read the catalog %s: %s", self.path, error)
                self.readable = False
        return self._db

    async def has_below(self, text: str) -> bool:
        """Whether a live name starts with ``text`` (a prefix ending in '/' or ':')."""
        return await self._in_thread(lambda db: _first(db, text) is not None, False)

    async def children(self, text: str) -> list[Record]:
        """One record per name in ``text``'s directory (at most ``MAX_LISTING``)."""
        return await self._in_thread(lambda db: _children(db, text), [])

    async def scheme_uris(self) -> list[str]:
        """One live URI of each scheme (at most ``MAX_LISTING``)."""
        return await self._in_thread(_scheme_uris, [])


def _first(
    db: sqlite3.Connection, text: str, after: str | None = None
) -> tuple[object, ...] | None:
    """The first live row whose URI starts with ``text`` (and is above ``after``)."""
    end = text[:-1] + chr(ord(text[-1]) + 1)  # text ends in '/' or ':'
    row: tuple[object, ...] | None = db.execute(
        "SELECT uri, kind, function, hash, size, qualifiers FROM assets "
        f"WHERE uri {'>=' if after is None else '>'} ? AND uri < ? AND {_LIVE} "
        "ORDER BY uri LIMIT 1",
        (text if after is None else after, end, time.time()),
    ).fetchone()
    return row


def _children(db: sqlite3.Connection, text: str) -> list[Record]:
    """A skip-scan of the index by URI, each step one indexed query past the subtree of
    the name it found."""
    records: list[Record] = []
    after: str | None = None
    for _ in range(MAX_LISTING):
        row = _first(db, text, after)
        if row is None:
            break
        uri, kind, function, hash_, size, qualifiers = row
        uri, hash_ = str(uri), str(hash_)
        assert isinstance(size, int)
        digest = Digest(hash_, size, DigestFunction.from_name(str(function)))
        records.append(Record(uri, digest, kind == "directory", json.loads(str(qualifiers))))
        piece, slash, _ = uri[len(text) :].partition("/")
        # Past this name's whole subtree, or just past this URI.
        after = f"{text}{piece}/\U0010ffff" if slash else uri
    return records


def _scheme_uris(db: sqlite3.Connection) -> list[str]:
    uris: list[str] = []
    after = ""
    for _ in range(MAX_LISTING):
        row = db.execute(
            f"SELECT uri FROM assets WHERE uri > ? AND {_LIVE} ORDER BY uri LIMIT 1",
            (after, time.time()),
        ).fetchone()
        if row is None:
            break
        uri = str(row[0])
        uris.append(uri)
        after = uri.partition(":")[0] + ";"  # past every URI of this scheme
    return uris
