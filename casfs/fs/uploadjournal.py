"""What the ``uploads/`` trees keep across mounts: their names in the journal
(``journal.py``) and the spool files an earlier mount left (``spool.py``). A part of
``Uploads`` (``uploads.py``), kept apart for its size: ``UploadJournal`` is its base class
and uses its trees, spool and counters.

Concurrency notes: runs in the mount's trio thread; restoring and recovering happen before
the mount answers its first request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from casfs.assetnames import check_qualifiers, check_uri
from casfs.digest import Digest, DigestFunction
from casfs.fs.journal import Journal, Record
from casfs.fs.spool import Spool
from casfs.fs.uploadentries import DirEntry, Entry, FileEntry, SymlinkEntry
from casfs.fs.uploadmachine import FileState
from casfs.fs.uploadstate import Phase

log = logging.getLogger("casfs.fs")
COMPACT_EVERY = 100_000  # journal records between compactions, at least (see save_names)


class UploadJournal:
    """The names journal and the recovery of left-over spool files, for ``Uploads``."""

    # Set by ``Uploads.__init__``.
    names: Journal | None
    spool: Spool
    roots: dict[str, DirEntry]
    _instance_of: dict[DirEntry, str]
    _compact_at: int
    _changes: int
    _entries: int

    def _count_recovered(self, count: int) -> None:
        """Count left-over files brought back to be finished (``UploadStats.recovered``)."""
        raise NotImplementedError

    # -- names across mounts ------------------------------------------------------------------
    #
    # The journal (``journal.py``) holds the trees' names: a record per change, over a
    # snapshot of every directory, symlink and committed file. Pending files are not in
    # it: their spool metadata says where they belong, and a pending file at a path wins
    # over a committed name there (the spool's record is always the newer: a change of
    # the name rewrites or drops it). Records:
    #   {"put": "dir", "i": instance, "p": path, "mtime": ns}
    #   {"put": "symlink", "i", "p", "mtime", "target": text}
    #   {"put": "file", "i", "p", "mtime", "mode": bits, "digest": "hash/size", "function": f,
    #    and for a file given an asset name: "uri": text, "q": {name: value}, "pushed": bool}
    #   {"rm": path, "i": instance}                  the entry and all below it
    #   {"mv": path, "to": path, "i": instance}      whatever was at "to" is replaced
    # A put replaces what is at its path (a directory keeps its children) and creates the
    # directories above that are missing. Paths are relative to uploads/; "" is its root.

    def _where(self, entry: Entry) -> tuple[str, str] | None:
        """(instance, path) of an entry in a tree; None if it is in none (a direct write,
        or an entry taken out)."""
        parts = []
        node = entry
        while node.parent is not None:
            if node.parent.children.get(node.name) is not node:
                return None
            parts.append(node.name)
            node = node.parent
        if not isinstance(node, DirEntry) or node not in self._instance_of:
            return None
        return self._instance_of[node], "/".join(reversed(parts))

    def _record(self, entry: Entry, instance: str, path: str) -> Record | None:
        """The put record of an entry's state; None for a pending file."""
        if isinstance(entry, DirEntry):
            return {"put": "dir", "i": instance, "p": path, "mtime": entry.mtime_ns}
        if isinstance(entry, SymlinkEntry):
            return {
                "put": "symlink", "i": instance, "p": path,
                "mtime": entry.mtime_ns, "target": entry.target,
            }  # fmt: skip
        if isinstance(entry, FileEntry) and entry.digest is not None:
            record: Record = {
                "put": "file", "i": instance, "p": path, "mtime": entry.mtime_ns,
                "mode": entry.mode, "digest": str(entry.digest),
                "function": entry.digest.function.name_lower,
            }  # fmt: skip
            if entry.uri is not None or entry.qualifiers:
                record.update(uri=entry.uri, q=dict(entry.qualifiers), pushed=entry.pushed)
            return record
        return None

    def _journal(self, record: Record) -> None:
        if self.names is None:
            return
        self.names.append(record)
        self._changes += 1
        if self._changes >= self._compact_at:
            self.save_names()

    def saved(self, entry: Entry) -> None:
        """Journal an entry's name and attributes after a change (of a directory, a
        symlink or a committed file; a pending file's are in its spool metadata)."""
        if self.names is None:
            return
        where = self._where(entry)
        record = self._record(entry, *where) if where is not None else None
        if record is not None:
            self._journal(record)

    def _snapshot(self) -> Iterator[Record]:
        """Put records of every directory, symlink and committed file, parents first."""
        for instance, root in self.roots.items():
            stack: list[tuple[Entry, str]] = [(root, "")]
            while stack:
                entry, path = stack.pop()
                record = self._record(entry, instance, path)
                if record is not None:
                    yield record
                if isinstance(entry, DirEntry):
                    for name, child in entry.children.items():
                        stack.append((child, f"{path}/{name}" if path else name))

    def save_names(self) -> None:
        """Compact the journal: the whole state as a new snapshot. A failure (a full
        disk) is logged; the old snapshot and journal stay."""
        if self.names is None:
            return
        entries = 0

        def counted() -> Iterator[Record]:
            nonlocal entries
            for record in self._snapshot():
                entries += 1
                yield record

        self._changes = 0
        try:
            self.names.compact(counted())
        except OSError as error:
            log.warning("names: cannot save them (%s); the journal keeps what it has", error)
            # Tried again sooner if appends have stopped, never at every change.
            self._compact_at = max(1000, self._entries) if self.names.stale else COMPACT_EVERY
            return
        self._entries = entries
        # A compaction costs the tree's size: after at least as many changes, so that the
        # cost per change stays constant (a tar -x of many files is not quadratic).
        self._compact_at = max(COMPACT_EVERY, 2 * entries)

    def restore_names(self) -> int:
        """Put back the names an earlier mount of this cache directory journaled, then
        compact the journal; return how many records were applied. A record that does
        not make sense is logged and skipped."""
        if self.names is None:
            return 0
        applied = 0
        for record in self.names.load():
            try:
                self._apply(record)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("names: record %.200s skipped (%s)", json.dumps(record), error)
                continue
            applied += 1
        self.save_names()
        return applied

    def _apply(self, record: Record) -> None:
        """Replay one record on the trees (entries restored hold no spool: plain edits)."""
        root = self.roots.get(record["i"])
        if root is None:
            raise ValueError(f"instance {record['i']!r} is not mounted")
        if "put" in record:
            self._apply_put(root, record)
        elif "rm" in record:
            found = _find(root, _split(record["rm"]))
            if found is not None and found.parent is not None:
                del found.parent.children[found.name]
        elif "mv" in record:
            source = _find(root, _split(record["mv"]))
            parts = _split(record["to"])
            if not parts:
                raise ValueError("a move onto the root")
            parent = _make_dirs(root, parts[:-1])
            if source is None or source.parent is None:  # a pending file moved
                parent.children.pop(parts[-1], None)
                return
            del source.parent.children[source.name]
            source.name, source.parent = parts[-1], parent
            parent.children[source.name] = source
        else:
            raise ValueError("no put, rm or mv")

    def _apply_put(self, root: DirEntry, record: Record) -> None:
        parts = _split(record["p"])
        mtime = record["mtime"]
        if not isinstance(mtime, int):
            raise TypeError("mtime is not an integer")
        kind = record["put"]
        if kind == "dir" and not parts:
            root.mtime_ns = mtime
            return
        if not parts:
            raise ValueError(f"a {kind} at the root")
        parent = _make_dirs(root, parts[:-1])
        name = parts[-1]
        old = parent.children.get(name)
        entry: Entry
        if kind == "dir":
            if isinstance(old, DirEntry):
                old.mtime_ns = mtime
                return
            entry = DirEntry(name=name, parent=parent)
        elif kind == "symlink":
            if not isinstance(record["target"], str):
                raise TypeError("target is not a string")
            entry = SymlinkEntry(name=name, parent=parent, target=record["target"])
        elif kind == "file":
            mode = record["mode"]
            if not isinstance(mode, int) or not 0 <= mode <= 0o777:
                raise ValueError(f"mode {mode!r}")
            function = DigestFunction.from_name(str(record["function"]))
            digest = Digest.parse(str(record["digest"]), function)
            entry = FileEntry(
                name=name, parent=parent, instance=self._instance_of[root], mode=mode,
                size=digest.size, life=FileState(Phase.COMMITTED, digest=digest),
            )  # fmt: skip
            _restore_naming(entry, record)
            if record.get("pushed") is True:
                entry.pushed_as = entry.naming()
        else:
            raise ValueError(f"unknown kind {kind!r}")
        entry.mtime_ns = mtime
        parent.children[name] = entry

    def unpushed(self) -> list[FileEntry]:
        """Committed files of the trees given an asset name whose push has not
        succeeded yet (as journaled: an earlier mount ended before it, or it failed)."""
        found = []
        for root in self.roots.values():
            stack: list[Entry] = [root]
            while stack:
                entry = stack.pop()
                if isinstance(entry, DirEntry):
                    stack.extend(entry.children.values())
                elif isinstance(entry, FileEntry) and entry.naming() and not entry.pushed:
                    found.append(entry)
        return found

    # -- recovery ---------------------------------------------------------------------------

    def recover(self) -> list[FileEntry]:
        """Put files a previous mount left in the spool back in place; return those a
        close had asked to commit (the others come back pending, to be written again)."""
        closed = []
        for data, meta in self.spool.leftovers():
            try:
                entry = self._recovered(data, meta)
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
                log.warning("spool: cannot bring back %s (%s); left alone", data.name, error)
                continue
            if entry is not None and entry.closed:
                closed.append(entry)
        self._count_recovered(len(closed))
        return closed

    def _recovered(self, data: Path, meta: dict[str, object]) -> FileEntry | None:
        """One left-over spool file back in its tree (None: it is not for this mount)."""
        instance = str(meta.get("instance", ""))
        if instance not in self.roots:
            log.warning("spool: %s belongs to instance %r, not mounted", data.name, instance)
            return None
        expected = None
        function = DigestFunction.from_name(str(meta.get("function", "sha256")))
        if meta.get("expected"):
            expected = Digest.parse(str(meta["expected"]), function)
        parent: DirEntry | None = None
        name = data.name
        if expected is None:
            parent = self.roots[instance]
            *dirs, name = str(meta["path"]).split("/")
            for part in dirs:
                child = parent.children.get(part)
                if not isinstance(child, DirEntry):
                    child = DirEntry(name=part, parent=parent)
                    parent.children[part] = child
                    self.saved(child)
                parent = child
        mode = meta.get("mode", 0o644)
        entry = FileEntry(
            name=name,
            parent=parent,
            instance=instance,
            mode=mode if isinstance(mode, int) else 0o644,
            expected=expected,
            hash_function=function,
            spool=data,
            size=data.stat().st_size,
            mtime_ns=data.stat().st_mtime_ns,  # writes and utime keep it the file's mtime
            life=FileState(Phase.CLOSED if meta.get("closed") is True else Phase.PENDING),
        )
        _restore_naming(entry, meta)
        if parent is not None:
            if name in parent.children:  # a committed name the pending file replaced
                log.info("%s: the pending file replaces its committed name", entry.label())
            parent.children[name] = entry
        if not entry.closed:
            if expected is not None:
                self.spool.discard(entry)  # a direct write cut short can never match
                return None
            log.warning("%s was never closed: kept, pending, not uploaded", entry.label())
        return entry


def _restore_naming(entry: FileEntry, saved: Mapping[str, object]) -> None:
    """A file's asset name and qualifiers, from a journal record or spool metadata
    (``uri``, ``q``), checked as setxattr checks them. A name the checks refuse (a
    damaged record, or rules tightened since it was saved) is logged and dropped: the
    file itself comes back, without its name."""
    uri, qualifiers = saved.get("uri"), saved.get("q") or {}
    try:
        if not isinstance(qualifiers, dict):
            raise TypeError("qualifiers are not an object")
        checked = check_qualifiers((str(n), str(v)) for n, v in qualifiers.items())
        entry.uri = None if uri is None else check_uri(str(uri))
    except (ValueError, TypeError) as error:
        log.warning("%s: its saved asset name is dropped: %s", entry.label(), error)
        return
    entry.qualifiers = checked


def _split(path: object) -> list[str]:
    """The names of a journaled path ("" is the root); refuses names no tree can hold."""
    if not isinstance(path, str):
        raise TypeError("path is not a string")
    parts = path.split("/") if path else []
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise ValueError(f"bad name {part!r} in {path!r}")
    return parts


def _find(root: DirEntry, parts: list[str]) -> Entry | None:
    entry: Entry = root
    for part in parts:
        if not isinstance(entry, DirEntry) or part not in entry.children:
            return None
        entry = entry.children[part]
    return entry


def _make_dirs(root: DirEntry, parts: list[str]) -> DirEntry:
    """The directory at ``parts``, made (over anything else there) where missing."""
    directory = root
    for part in parts:
        child = directory.children.get(part)
        if not isinstance(child, DirEntry):
            child = DirEntry(name=part, parent=directory)
            directory.children[part] = child
        directory = child
    return directory
