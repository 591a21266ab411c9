"""The lifecycle of a file of ``uploads/`` (or a direct write of ``blobs/<hash>/<size>``)
as a state machine with no I/O in it: its phases, events, actions and table.

Each request is an ``Event``; ``TABLE`` says, for every ``Phase``, what each event leads
to: the next phase and the ``Do`` actions that carry it out, a refusal (an errno), or
``WAIT`` (a commit is running: wait for it, then ask again). A pair missing from the
table cannot happen and raises ``LifecycleError``. ``FileState`` (``uploadmachine.py``)
runs the table for one file, with the data its transitions decide by (open counts, the
committed digest, the errors owed); the driver (``uploaddriver.py``, in the trio thread)
delivers the events and does the actions: spool files, hashing, uploads, the journal.
Nothing here awaits, touches a file or knows about trio, so every transition is tested
without a mount (``tests/test_uploadstate.py``).

The phases, and the events that move a file between them (changes are WRITE,
TRUNCATE, OPEN_TRUNCATE and CUT, a spool write that failed and cut the file short)::

                       create, or a left-over never closed
                                    |
                                    v
        +-- changes -------->  PENDING  <------------ changes ----------------+
        |                           |                                          |
        |                        COMMIT  (every close and fsync)               |
        |                           v                                          |
        |   (ABORTED: back) <-- SETTLING   the answered writes land;           |
        |                           |       changes WAIT                       |
        |                        SETTLED --- SETTLED_SHORT (a direct write     |
        |                           v          that lost bytes) --> REFUSED    |
        |                       UPLOADING   hash, ask, upload; changes WAIT    |
        |                       /   |    \\                                      |
        |       UPLOAD_FAILED  / UPLOADED  \\ MISMATCH (a direct write)          |
        |                     v     v       v                                  |
        +------------- CLOSED   COMMITTED_SPOOLED   REFUSED -------------------+
           (COMMIT again:           |   (changes: PENDING)    | last release
            fsync, close,        last release                 v
            next mount)             v                        GONE
                                COMMITTED  (read from the CAS; OPEN_TRUNCATE: PENDING)

    UNLINK from any phase but SETTLING and UPLOADING (which WAIT): UNLINKED while a
    descriptor is open (written and read, never committed), then GONE at the last
    release. An unlinked file that had no spool is GONE at once.

What each phase means (``closed`` is what a file's spool metadata records for the next
mount: a close asked for this content):

- PENDING: written since its last commit, or never committed; no close asked for this
  content yet (a left-over of a mount that died with it open comes back here, and is not
  uploaded). Spooled.
- CLOSED: a close asked for this content and it is not committed: its upload failed or
  was cancelled, or an earlier mount left it. Spooled; fsync, a close or the next mount
  retries the upload.
- SETTLING, UPLOADING: a commit runs (one at a time: the driver's lock). Reads and
  releases go on; every change waits for the commit to end, then is decided again, so a
  write during another descriptor's commit is never refused (no EBUSY) and makes the file
  PENDING for the next close (issue 14, items 1 and 2).
- COMMITTED_SPOOLED: committed; the spool stays while a descriptor is open, so a write
  through it (a duplicate, a child, a mapping) makes it PENDING again.
- COMMITTED: committed, no spool: its content is only in the CAS. Writing it needs
  O_TRUNC (casfs keeps no copy to modify).
- REFUSED: a direct write whose content did not match its name (or lost bytes) at its
  last commit; dropped at its last release, unless written again first.
- UNLINKED: taken out of its tree while open; GONE: out of its tree with no spool.

Errors owed to the program: ``write_error`` (a write answered before it landed and then
failed) is reported once, by the next WRITE or commit; ``lost`` (the bytes cut short by
that failure) fails every WRITE past the file's end and every commit until a TRUNCATE to
at most the file's size says what the file holds (a duplicate's close must not clear it
for the writer), so no close returns 0 over a hole the program did not write.

Any fsync commits, through a read-only descriptor too (issue 14, item 3): the driver
sends COMMIT for it as for a close.

Concurrency notes: none here: the table is constant (``uploadmachine.py`` says who
changes a file's state, and when).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass


class Phase(enum.Enum):
    PENDING = "pending"
    CLOSED = "closed"
    SETTLING = "settling"
    UPLOADING = "uploading"
    COMMITTED_SPOOLED = "committed, spooled"
    COMMITTED = "committed"
    REFUSED = "refused"
    UNLINKED = "unlinked"
    GONE = "gone"


class Event(enum.Enum):
    OPEN_READ = "open for reading"
    OPEN_WRITE = "open for writing"
    OPEN_TRUNCATE = "open for writing with O_TRUNC"
    WRITE = "write"
    TRUNCATE = "truncate"
    CUT = "a spool write failed and the file was cut where it began"
    COMMIT = "close or fsync asks for a commit"
    SETTLED = "the commit's writes have landed"
    SETTLED_SHORT = "the commit's writes have landed, and a direct write lost bytes"
    ABORTED = "the commit failed or was cancelled before its upload"
    UPLOADED = "the blob is in the CAS"
    UPLOAD_FAILED = "the upload failed or was cancelled"
    MISMATCH = "a direct write's content is not its name"
    RELEASED = "the last descriptor is gone"
    RELEASED_DIRECT = "the last descriptor of a direct write is gone"
    UNLINK = "taken out of its tree (unlink, rename over it, create over it)"
    MOVE = "renamed"


class Do(enum.Enum):
    """What the driver does for a transition, in the order given."""

    CREATE_SPOOL = "a new empty spool file and its metadata, a new running hash"
    OPEN_FD = "open the spool file for writing if it is not"
    TRUNCATE_SPOOL = "cut the spool file to the event's size"
    QUEUE_WRITE = "queue the write for the spool file (and the running hash)"
    RECORD = "rewrite the spool metadata (where it belongs, whether a close asked)"
    MARK_CLOSED = "RECORD, with a failure logged: the upload goes on"
    SETTLE = "land every answered write in the spool file"
    UPLOAD = "hash the spool, ask FindMissingBlobs, upload what is missing"
    JOURNAL = "journal the committed name"
    FORGET = "drop the spool metadata: no later mount brings the file back"
    STOP_SPOOLER = "drop the writes still queued"
    CLOSE_FD = "close the spool file's descriptor"
    DISCARD = "remove the spool file and its metadata"


@dataclass(frozen=True, slots=True)
class Go:
    """To this phase, doing these actions."""

    next: Phase
    actions: tuple[Do, ...] = ()


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refused with this errno; nothing changes."""

    errno: int


class Wait:
    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()  # a commit is running: wait for it to end, then deliver the event again
Outcome = Go | Refuse | Wait


class LifecycleError(Exception):
    """An event that cannot happen in this phase: a bug in the driver."""


P = Phase
E = Event
CHANGES = frozenset({E.WRITE, E.TRUNCATE, E.OPEN_TRUNCATE, E.CUT})


def _busy(here: Phase) -> dict[Event, Outcome | None]:
    """A phase with a commit running (SETTLING, UPLOADING): changes wait for it; reads
    go on, and a move of a directory above rewrites where the file belongs."""
    changes = (E.OPEN_WRITE, E.OPEN_TRUNCATE, E.WRITE, E.TRUNCATE, E.COMMIT, E.UNLINK)
    return {event: WAIT for event in changes} | {
        E.OPEN_READ: None,  # None: to the same phase, doing nothing
        E.MOVE: Go(here, (Do.RECORD,)),
        E.RELEASED: Go(here, (Do.CLOSE_FD,)),  # the commit decides what becomes of it
        E.RELEASED_DIRECT: Go(here, (Do.CLOSE_FD,)),
    }


def _spooled(here: Phase, *, closed: bool) -> dict[Event, Outcome | None]:
    """A phase with a spool file outside a commit: PENDING, CLOSED, REFUSED and
    COMMITTED_SPOOLED differ only in their releases and in whether a change must rewrite
    the metadata (``closed``: it says a close asked, and that is no longer so)."""
    record = (Do.RECORD,) if closed else ()
    return {
        E.OPEN_READ: None,
        E.OPEN_WRITE: Go(here, (Do.OPEN_FD,)),
        E.OPEN_TRUNCATE: Go(P.PENDING, (Do.TRUNCATE_SPOOL, *record, Do.OPEN_FD)),
        E.WRITE: Go(P.PENDING, (Do.QUEUE_WRITE, *record)),
        E.TRUNCATE: Go(P.PENDING, (Do.TRUNCATE_SPOOL, *record)),
        E.CUT: Go(P.PENDING, (Do.TRUNCATE_SPOOL, *record)),
        E.UNLINK: Go(P.UNLINKED, (Do.STOP_SPOOLER, Do.FORGET)),
        E.MOVE: Go(here, (Do.RECORD,)),
    }


_TABLE: dict[Phase, dict[Event, Outcome | None]] = {
    P.PENDING: _spooled(P.PENDING, closed=False)
    | {
        E.COMMIT: Go(P.SETTLING, (Do.SETTLE,)),
        E.RELEASED: Go(P.PENDING, (Do.CLOSE_FD,)),
        E.RELEASED_DIRECT: Go(P.GONE, (Do.DISCARD,)),  # abandoned, never closed
    },
    P.CLOSED: _spooled(P.CLOSED, closed=True)
    | {
        E.COMMIT: Go(P.SETTLING, (Do.SETTLE,)),
        E.RELEASED: Go(P.CLOSED, (Do.CLOSE_FD,)),  # kept for fsync or the next mount
        E.RELEASED_DIRECT: Go(P.CLOSED, (Do.CLOSE_FD,)),
    },
    P.REFUSED: _spooled(P.REFUSED, closed=True)
    | {
        E.COMMIT: Go(P.SETTLING, (Do.SETTLE,)),  # hashed again: it may have been set right
        E.RELEASED: Go(P.GONE, (Do.DISCARD,)),
        E.RELEASED_DIRECT: Go(P.GONE, (Do.DISCARD,)),
    },
    P.SETTLING: _busy(P.SETTLING)
    | {
        E.CUT: None,  # decided as in the phase the commit came from (``spool_failed``)
        E.SETTLED: Go(P.UPLOADING, (Do.MARK_CLOSED, Do.UPLOAD)),
        E.SETTLED_SHORT: Go(P.REFUSED),
        E.ABORTED: None,  # back to the phase the commit came from (``aborted``)
    },
    P.UPLOADING: _busy(P.UPLOADING)
    | {
        E.UPLOADED: Go(P.COMMITTED_SPOOLED, (Do.JOURNAL, Do.FORGET)),
        E.UPLOAD_FAILED: Go(P.CLOSED),
        E.MISMATCH: Go(P.REFUSED),
    },
    P.COMMITTED_SPOOLED: _spooled(P.COMMITTED_SPOOLED, closed=True)
    | {
        E.COMMIT: None,  # nothing to do: the digest stands
        E.RELEASED: Go(P.COMMITTED, (Do.DISCARD,)),
        E.RELEASED_DIRECT: Go(P.COMMITTED, (Do.DISCARD,)),
    },
    P.COMMITTED: {
        E.OPEN_READ: None,
        E.OPEN_WRITE: Refuse(errno.EACCES),  # no copy of the content to modify
        E.OPEN_TRUNCATE: Go(P.PENDING, (Do.CREATE_SPOOL, Do.OPEN_FD)),
        E.WRITE: Refuse(errno.EBADF),
        E.TRUNCATE: Refuse(errno.EACCES),
        E.COMMIT: None,
        E.RELEASED: None,
        E.RELEASED_DIRECT: None,
        E.UNLINK: Go(P.GONE),
        E.MOVE: None,
    },
    P.UNLINKED: {
        E.OPEN_READ: None,
        E.OPEN_WRITE: Go(P.UNLINKED, (Do.OPEN_FD,)),
        E.OPEN_TRUNCATE: Go(P.UNLINKED, (Do.TRUNCATE_SPOOL, Do.OPEN_FD)),
        E.WRITE: Go(P.UNLINKED, (Do.QUEUE_WRITE,)),
        E.TRUNCATE: Go(P.UNLINKED, (Do.TRUNCATE_SPOOL,)),
        E.CUT: Go(P.UNLINKED, (Do.TRUNCATE_SPOOL,)),
        E.COMMIT: None,  # nobody can name it: a close has nothing to commit
        E.RELEASED: Go(P.GONE, (Do.DISCARD,)),
        E.RELEASED_DIRECT: Go(P.GONE, (Do.DISCARD,)),
        E.UNLINK: None,
    },
    P.GONE: {
        E.OPEN_READ: None,
        E.OPEN_WRITE: Refuse(errno.EACCES),
        E.OPEN_TRUNCATE: Go(P.UNLINKED, (Do.CREATE_SPOOL, Do.OPEN_FD)),
        E.WRITE: Refuse(errno.EBADF),
        E.TRUNCATE: Refuse(errno.EACCES),
        E.COMMIT: None,
        E.RELEASED: None,
        E.RELEASED_DIRECT: None,
        E.UNLINK: None,
        E.MOVE: None,
    },
}

# The table: every phase, every event it can meet, and what that leads to.
TABLE: dict[Phase, dict[Event, Outcome]] = {
    phase: {event: Go(phase) if out is None else out for event, out in row.items()}
    for phase, row in _TABLE.items()
}

SPOOLED = frozenset(
    {P.PENDING, P.CLOSED, P.SETTLING, P.UPLOADING, P.COMMITTED_SPOOLED, P.REFUSED, P.UNLINKED}
)
COMMITTING = frozenset({P.SETTLING, P.UPLOADING})
KEEPS_DIGEST = frozenset({P.COMMITTED, P.COMMITTED_SPOOLED, P.UNLINKED, P.GONE})
CLOSED = frozenset({P.CLOSED, P.REFUSED, P.UPLOADING, P.COMMITTED_SPOOLED, P.COMMITTED})
