"""The asset index: Remote Asset names (URI plus qualifiers) of blobs and trees, in SQLite.

One file, ``assets.sqlite3``, in the store's root beside ``cas/``. One row per
(URI, kind, qualifiers): pushing the same name again replaces its digest. Invariants:

- Every change is one SQLite transaction (write-ahead log; ``synchronous=FULL`` unless the
  store runs without fsync): a push of several URIs, killed at any instant, is afterwards
  either wholly in the index or not at all, and the file always opens.
- Qualifiers are stored as canonical JSON (names sorted), so equal sets are equal text and
  the unique key holds; their names are also kept in ``qualifier_names`` so that Fetch can
  tell a qualifier nobody ever pushed (unsupported) from one that matches nothing.
- The index never says a blob exists: Fetch checks the CAS for the digest and references
  of every candidate, so an evicted blob is simply not an answer.
- Expired rows are never answered, and are deleted by the next push.

Thread-safe: one connection behind a lock (SQLite serialises writers anyway); readers in
other processes (``casfs find``) open their own read-only connection.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from casfs.digest import Digest, DigestFunction
from casfs.store.errors import StoreError

INDEX_NAME = "assets.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    uri TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('blob', 'directory')),
    qualifiers TEXT NOT NULL,
    function TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    refs TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    expire_at REAL,
    PRIMARY KEY (uri, kind, qualifiers)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS assets_by_hash ON assets (hash);
CREATE INDEX IF NOT EXISTS assets_by_expiry ON assets (expire_at) WHERE expire_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS qualifier_names (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""


class AssetKind(Enum):
    """What an asset names: a blob, or the root Directory of a tree."""

    BLOB = "blob"
    DIRECTORY = "directory"


class AssetIndexError(StoreError):
    """The index file cannot be opened or is of an unknown schema."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One name of a blob or tree, as pushed."""

    uri: str
    kind: AssetKind
    qualifiers: Mapping[str, str]
    digest: Digest
    pushed_at: float
    expire_at: float | None = None
    references: tuple[Digest, ...] = ()


@dataclass(frozen=True, slots=True)
class Search:
    """What ``AssetIndex.search_json`` selects; every field set narrows it."""

    uri_prefix: str | None = None
    qualifiers: Mapping[str, str] = field(default_factory=dict)
    qualifier_names: Sequence[str] = ()
    min_size: int | None = None
    max_size: int | None = None
    hash: str | None = None
    kind: AssetKind | None = None
    include_expired: bool = False
    by_digest: bool = False  # one object per digest, with all its names


def _row_to_asset(row: sqlite3.Row) -> Asset:
    function = DigestFunction.from_name(row["function"])
    return Asset(
        uri=row["uri"],
        kind=AssetKind(row["kind"]),
        qualifiers=json.loads(row["qualifiers"]),
        digest=Digest(row["hash"], row["size"], function),
        pushed_at=row["pushed_at"],
        expire_at=row["expire_at"],
        references=tuple(Digest(h, s, function) for h, s in json.loads(row["refs"])),
    )


def _canonical(qualifiers: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(qualifiers.items())), ensure_ascii=False, separators=(",", ":"))


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    try:
        if read_only:
            connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        else:
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout = 10000")
        return connection
    except sqlite3.Error as error:
        raise AssetIndexError(f"cannot open the asset index {path}: {error}") from error


class AssetIndex:
    """The asset names of one store directory."""

    def __init__(self, root: Path, *, fsync: bool = True, read_only: bool = False) -> None:
        self.path = root / INDEX_NAME
        self._lock = threading.Lock()
        self._db = _connect(self.path, read_only=read_only)
        if read_only:
            return
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'OFF'}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise AssetIndexError(
                    f"the asset index {self.path} has schema {version}; this casfs knows "
                    f"{SCHEMA_VERSION}"
                )
            self._db.executescript(_SCHEMA)  # idempotent: every statement IF NOT EXISTS
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as error:
            raise AssetIndexError(f"cannot set up the asset index {self.path}: {error}") from error

    @classmethod
    def open_read_only(cls, root: Path) -> AssetIndex | None:
        """The index of the store ``root`` for reading, or None if it has none yet."""
        if not (root / INDEX_NAME).exists():
            return None
        return cls(root, read_only=True)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (which passes on)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def push(
        self,
        kind: AssetKind,
        uris: Sequence[str],
        qualifiers: Mapping[str, str],
        digest: Digest,
        *,
        references: Sequence[Digest] = (),
        expire_at: float | None = None,
        now: float | None = None,
    ) -> None:
        """Record that every URI with ``qualifiers`` names ``digest``, in one transaction
        (a crash leaves all or none of them); a name pushed before is replaced. Expired
        rows are deleted in the same transaction. Raises ``StoreError`` if the disk fails."""
        now = time.time() if now is None else now
        text = _canonical(qualifiers)
        refs = json.dumps([[d.hash, d.size] for d in references])
        rows = [
            (uri, kind.value, text, digest.function.name_lower, digest.hash, digest.size, refs,
             now, expire_at)
            for uri in uris
        ]  # fmt: skip
        try:
            with self._lock, self._transaction():
                self._db.execute(
                    "DELETE FROM assets WHERE expire_at IS NOT NULL AND expire_at <= ?", (now,)
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO assets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO qualifier_names VALUES (?)",
                    [(name,) for name in qualifiers],
                )
        except sqlite3.Error as error:
            raise StoreError(f"recording assets {list(uris)!r}: {error}") from error

    def candidates(
        self,
        kind: AssetKind,
        uris: Sequence[str],
        qualifiers: Mapping[str, str],
        *,
        oldest: float | None = None,
        now: float | None = None,
    ) -> list[Asset]:
        """The live assets of ``kind`` under any of ``uris`` that carry every one of
        ``qualifiers`` (pushed ones may carry more), newest push first."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(uris))
        query = (
            f"SELECT * FROM assets WHERE uri IN ({marks}) AND kind = ? "
            "AND (expire_at IS NULL OR expire_at > ?) AND pushed_at >= ? "
            "ORDER BY pushed_at DESC"
        )
        params = (*uris, kind.value, now, -1.0 if oldest is None else oldest)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        found = [_row_to_asset(row) for row in rows]
        return [a for a in found if all(a.qualifiers.get(n) == v for n, v in qualifiers.items())]

    def known_qualifiers(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` that some push ever carried."""
        marks = ",".join("?" * len(names))
        with self._lock:
            rows = self._db.execute(
                f"SELECT name FROM qualifier_names WHERE name IN ({marks})", tuple(names)
            ).fetchall()
        return {row[0] for row in rows}

    def search_json(self, search: Search, *, now: float | None = None) -> Iterator[str]:
        """The assets ``search`` selects as JSON objects, one string each, built by SQLite
        and streamed from one read: ordered by URI, or with ``by_digest`` one object per
        digest with all its names (``names``), ordered by digest. Memory stays bounded
        whatever the index's size (SQLite sorts on disk past its cache). Meant for one
        reader thread (``casfs find``); raises ``StoreError`` if the file cannot be read."""
        where, params = _where(search, time.time() if now is None else now)
        if search.by_digest:
            query = (
                "SELECT json_object('digest', hash || '/' || size, 'digest_function', function,"
                " 'size', size, 'names', json_group_array(json_object("
                "'uri', uri, 'kind', kind, 'qualifiers', json(qualifiers))))"
                f" FROM (SELECT * FROM assets {where} ORDER BY hash, size, function, uri)"
                " GROUP BY hash, size, function ORDER BY hash, size, function"
            )
        else:
            query = (
                "SELECT json_object('uri', uri, 'kind', kind, 'digest', hash || '/' || size,"
                " 'digest_function', function, 'size', size, 'qualifiers', json(qualifiers),"
                " 'pushed_at', pushed_at, 'expire_at', expire_at)"
                f" FROM assets {where} ORDER BY uri, kind, qualifiers"
            )
        try:
            for (line,) in self._db.execute(query, params):
                yield line
        except sqlite3.Error as error:
            raise StoreError(f"searching the asset index {self.path}: {error}") from error


def _where(search: Search, now: float) -> tuple[str, list[object]]:
    """The WHERE clause (empty if nothing narrows) and its parameters for ``search``."""
    where: list[str] = []
    params: list[object] = []
    if search.uri_prefix:
        where.append("uri >= ?")
        params.append(search.uri_prefix)
        end = _prefix_end(search.uri_prefix)
        if end is not None:
            where.append("uri < ?")
            params.append(end)
    for name, value in search.qualifiers.items():
        where.append(
            "EXISTS (SELECT 1 FROM json_each(assets.qualifiers) WHERE key = ? AND value = ?)"
        )
        params += [name, value]
    for name in search.qualifier_names:
        where.append("EXISTS (SELECT 1 FROM json_each(assets.qualifiers) WHERE key = ?)")
        params.append(name)
    if search.min_size is not None:
        where.append("size >= ?")
        params.append(search.min_size)
    if search.max_size is not None:
        where.append("size <= ?")
        params.append(search.max_size)
    if search.hash is not None:
        where.append("hash = ?")
        params.append(search.hash)
    if search.kind is not None:
        where.append("kind = ?")
        params.append(search.kind.value)
    if not search.include_expired:
        where.append("(expire_at IS NULL OR expire_at > ?)")
        params.append(now)
    return ("WHERE " + " AND ".join(where) if where else ""), params
