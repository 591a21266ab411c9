"""The upload lifecycle's table (``casfs/fs/uploadstate.py``), with no mount, no server
and no trio: every phase against every event, the rules the table must keep, and the
cases of issue 14 (two descriptors, a write during another descriptor's commit, fsync
through a read-only descriptor of a pending file) as sequences of events."""

from __future__ import annotations

import contextlib
import errno
import itertools

import pytest

from casfs.digest import Digest
from casfs.fs.uploadmachine import FileState, Step
from casfs.fs.uploadstate import (
    COMMITTING,
    SPOOLED,
    TABLE,
    WAIT,
    Do,
    Event,
    Go,
    LifecycleError,
    Phase,
    Refuse,
)

P, E = Phase, Event
DIGEST = Digest.of_bytes(b"x")
CHANGES = (E.WRITE, E.TRUNCATE, E.OPEN_TRUNCATE, E.CUT)
COMMIT_ONLY = (E.SETTLED, E.SETTLED_SHORT, E.ABORTED, E.UPLOADED, E.UPLOAD_FAILED, E.MISMATCH)


def in_phase(phase: Phase, *, opens: int = 1, writers: int = 1) -> FileState:
    committed = phase in (P.COMMITTED, P.COMMITTED_SPOOLED)
    life = FileState(phase, digest=DIGEST if committed else None)
    life.opens, life.writers = opens, writers
    if phase in COMMITTING:
        life.before = P.PENDING
    return life


# -- every phase x every event -------------------------------------------------------------

# What each phase does with each event, written out by hand (the table is built from
# shared rows; this is what it must come to). "-" cannot happen, "wait", "refuse N",
# or the next phase with its actions.
EXPECTED: dict[Phase, dict[Event, str]] = {
    P.PENDING: {
        E.OPEN_READ: "PENDING", E.OPEN_WRITE: "PENDING OPEN_FD",
        E.OPEN_TRUNCATE: "PENDING TRUNCATE_SPOOL OPEN_FD", E.WRITE: "PENDING QUEUE_WRITE",
        E.TRUNCATE: "PENDING TRUNCATE_SPOOL", E.CUT: "PENDING TRUNCATE_SPOOL",
        E.COMMIT: "SETTLING SETTLE", E.RELEASED: "PENDING CLOSE_FD",
        E.RELEASED_DIRECT: "GONE DISCARD", E.UNLINK: "UNLINKED STOP_SPOOLER FORGET",
        E.MOVE: "PENDING RECORD",
    },
    P.CLOSED: {
        E.OPEN_READ: "CLOSED", E.OPEN_WRITE: "CLOSED OPEN_FD",
        E.OPEN_TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD OPEN_FD",
        E.WRITE: "PENDING QUEUE_WRITE RECORD", E.TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD",
        E.CUT: "PENDING TRUNCATE_SPOOL RECORD", E.COMMIT: "SETTLING SETTLE",
        E.RELEASED: "CLOSED CLOSE_FD", E.RELEASED_DIRECT: "CLOSED CLOSE_FD",
        E.UNLINK: "UNLINKED STOP_SPOOLER FORGET", E.MOVE: "CLOSED RECORD",
    },
    P.REFUSED: {
        E.OPEN_READ: "REFUSED", E.OPEN_WRITE: "REFUSED OPEN_FD",
        E.OPEN_TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD OPEN_FD",
        E.WRITE: "PENDING QUEUE_WRITE RECORD", E.TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD",
        E.CUT: "PENDING TRUNCATE_SPOOL RECORD", E.COMMIT: "SETTLING SETTLE",
        E.RELEASED: "GONE DISCARD", E.RELEASED_DIRECT: "GONE DISCARD",
        E.UNLINK: "UNLINKED STOP_SPOOLER FORGET", E.MOVE: "REFUSED RECORD",
    },
    P.SETTLING: {
        E.OPEN_READ: "SETTLING", E.OPEN_WRITE: "wait", E.OPEN_TRUNCATE: "wait",
        E.WRITE: "wait", E.TRUNCATE: "wait", E.CUT: "SETTLING", E.COMMIT: "wait",
        E.SETTLED: "UPLOADING MARK_CLOSED UPLOAD", E.SETTLED_SHORT: "REFUSED",
        E.ABORTED: "SETTLING", E.UPLOADED: "-", E.UPLOAD_FAILED: "-", E.MISMATCH: "-",
        E.RELEASED: "SETTLING CLOSE_FD", E.RELEASED_DIRECT: "SETTLING CLOSE_FD",
        E.UNLINK: "wait", E.MOVE: "SETTLING RECORD",
    },
    P.UPLOADING: {
        E.OPEN_READ: "UPLOADING", E.OPEN_WRITE: "wait", E.OPEN_TRUNCATE: "wait",
        E.WRITE: "wait", E.TRUNCATE: "wait", E.CUT: "-", E.COMMIT: "wait",
        E.SETTLED: "-", E.SETTLED_SHORT: "-", E.ABORTED: "-",
        E.UPLOADED: "COMMITTED_SPOOLED JOURNAL FORGET", E.UPLOAD_FAILED: "CLOSED",
        E.MISMATCH: "REFUSED", E.RELEASED: "UPLOADING CLOSE_FD",
        E.RELEASED_DIRECT: "UPLOADING CLOSE_FD", E.UNLINK: "wait", E.MOVE: "UPLOADING RECORD",
    },
    P.COMMITTED_SPOOLED: {
        E.OPEN_READ: "COMMITTED_SPOOLED", E.OPEN_WRITE: "COMMITTED_SPOOLED OPEN_FD",
        E.OPEN_TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD OPEN_FD",
        E.WRITE: "PENDING QUEUE_WRITE RECORD", E.TRUNCATE: "PENDING TRUNCATE_SPOOL RECORD",
        E.CUT: "PENDING TRUNCATE_SPOOL RECORD", E.COMMIT: "COMMITTED_SPOOLED",
        E.RELEASED: "COMMITTED DISCARD", E.RELEASED_DIRECT: "COMMITTED DISCARD",
        E.UNLINK: "UNLINKED STOP_SPOOLER FORGET", E.MOVE: "COMMITTED_SPOOLED RECORD",
    },
    P.COMMITTED: {
        E.OPEN_READ: "COMMITTED", E.OPEN_WRITE: "refuse EACCES",
        E.OPEN_TRUNCATE: "PENDING CREATE_SPOOL OPEN_FD", E.WRITE: "refuse EBADF",
        E.TRUNCATE: "refuse EACCES", E.CUT: "-", E.COMMIT: "COMMITTED",
        E.RELEASED: "COMMITTED", E.RELEASED_DIRECT: "COMMITTED", E.UNLINK: "GONE",
        E.MOVE: "COMMITTED",
    },
    P.UNLINKED: {
        E.OPEN_READ: "UNLINKED", E.OPEN_WRITE: "UNLINKED OPEN_FD",
        E.OPEN_TRUNCATE: "UNLINKED TRUNCATE_SPOOL OPEN_FD", E.WRITE: "UNLINKED QUEUE_WRITE",
        E.TRUNCATE: "UNLINKED TRUNCATE_SPOOL", E.CUT: "UNLINKED TRUNCATE_SPOOL",
        E.COMMIT: "UNLINKED", E.RELEASED: "GONE DISCARD", E.RELEASED_DIRECT: "GONE DISCARD",
        E.UNLINK: "UNLINKED", E.MOVE: "-",
    },
    P.GONE: {
        E.OPEN_READ: "GONE", E.OPEN_WRITE: "refuse EACCES",
        E.OPEN_TRUNCATE: "UNLINKED CREATE_SPOOL OPEN_FD", E.WRITE: "refuse EBADF",
        E.TRUNCATE: "refuse EACCES", E.CUT: "-", E.COMMIT: "GONE", E.RELEASED: "GONE",
        E.RELEASED_DIRECT: "GONE", E.UNLINK: "GONE", E.MOVE: "GONE",
    },
}  # fmt: skip


def _spelled(life: FileState, event: Event) -> str:
    try:
        outcome = life.outcome(event)
    except LifecycleError:
        return "-"
    if outcome is WAIT:
        return "wait"
    if isinstance(outcome, Refuse):
        return f"refuse {errno.errorcode[outcome.errno]}"
    assert isinstance(outcome, Go)
    return " ".join([outcome.next.name, *(action.name for action in outcome.actions)])


@pytest.mark.parametrize("phase", list(Phase))
def test_every_event_in_every_phase_is_as_written(phase: Phase) -> None:
    """Each phase answers each event as the hand-written table says, and an event that
    cannot happen raises instead of changing anything."""
    written = {event: "-" for event in COMMIT_ONLY} | EXPECTED[phase]
    assert set(written) == set(Event)  # every event is written down
    for event in Event:
        life = in_phase(phase)
        assert _spelled(life, event) == written[event], (phase, event)
        if written[event] == "-":
            with pytest.raises(LifecycleError):
                life.handle(event)
            assert life.phase is phase


def test_the_table_keeps_its_rules() -> None:
    """Rules a table edit must not break, over every cell."""
    for phase, row in TABLE.items():
        for event, outcome in row.items():
            if phase in COMMITTING and event in (*CHANGES, E.COMMIT, E.UNLINK) and event != E.CUT:
                assert outcome is WAIT  # nothing changes a file under its commit
            if not isinstance(outcome, Go):
                continue
            actions = outcome.actions
            if Do.QUEUE_WRITE in actions or Do.TRUNCATE_SPOOL in actions:
                assert phase in SPOOLED  # only a spooled file is written
            if Do.DISCARD in actions:
                assert outcome.next in (P.COMMITTED, P.GONE)  # no spool, by its phase
            if outcome.next in SPOOLED and phase not in SPOOLED:
                assert Do.CREATE_SPOOL in actions
            if event in CHANGES and phase in (P.CLOSED, P.REFUSED, P.COMMITTED_SPOOLED):
                assert Do.RECORD in actions  # a later mount must not upload it as closed
            if event in CHANGES and phase not in (P.UNLINKED, P.GONE, *COMMITTING):
                assert outcome.next is P.PENDING  # every change makes the file pending
            if event is E.COMMIT and phase in (P.PENDING, P.CLOSED, P.REFUSED):
                assert outcome.next is P.SETTLING
    for event in COMMIT_ONLY:
        for phase in Phase:
            if phase not in COMMITTING:
                with pytest.raises(LifecycleError):
                    in_phase(phase).handle(event)


@pytest.mark.parametrize("phase", list(Phase))
def test_the_digest_stands_only_for_committed_content(phase: Phase) -> None:
    """A change forgets the digest; a committed file keeps it through reads and moves."""
    for event in set(Event) - {E.UPLOADED}:  # delivered with its digest: ``uploaded``
        life = in_phase(phase)
        try:
            step = life.handle(event)
        except LifecycleError:
            continue
        if step.wait or step.refuse is not None:
            assert life.phase is phase
            continue
        if event in CHANGES:
            assert life.digest is None
        if life.phase in (P.COMMITTED, P.COMMITTED_SPOOLED):
            assert life.digest == DIGEST


# -- descriptors, commits and errors owed -------------------------------------------------


def open_(life: FileState, *, write: bool) -> Step:
    """A descriptor opened, as the driver does it: decided, done, counted."""
    step = life.open(write=write, truncate=False)
    assert not step.wait and step.refuse is None
    life.opened(write=write)
    return step


def _commit(life: FileState, digest: Digest = DIGEST) -> list[Do]:
    """A whole successful commit; the actions the driver would do."""
    actions = list(life.commit().actions)
    actions += life.settled().actions
    assert life.phase is P.UPLOADING
    step = life.uploaded(digest)
    assert step.report is None
    return actions + list(step.actions)


def test_a_new_file_written_and_closed() -> None:
    life = FileState()
    assert open_(life, write=True).actions == (Do.OPEN_FD,)
    assert life.write(0, 0).actions == (Do.QUEUE_WRITE,)
    assert not life.closed
    assert _commit(life) == [Do.SETTLE, Do.MARK_CLOSED, Do.UPLOAD, Do.JOURNAL, Do.FORGET]
    assert life.phase is P.COMMITTED_SPOOLED and life.closed
    assert life.release(wrote=True).actions == (Do.SETTLE, Do.STOP_SPOOLER)
    assert life.unused().actions == (Do.DISCARD,)
    assert life.phase is P.COMMITTED and life.digest == DIGEST
    assert life.open(write=True, truncate=False).refuse == errno.EACCES
    assert life.opens == 0  # a refused open is not counted


def test_two_descriptors_each_close_commits_what_was_written() -> None:
    """Issue 14, item 1: A closes while B still writes. B's writes after A's commit make
    the file pending again, and B's close commits them: no close returns 0 over bytes
    it did not commit."""
    life = FileState()
    open_(life, write=True)  # A
    open_(life, write=True)  # B
    life.write(0, 0)
    life.commit()
    life.settled()
    assert life.write(10, 10).wait  # B during A's upload: waits, is not refused
    life.uploaded(DIGEST)
    life.release(wrote=True)  # A is gone
    assert life.unused().actions == ()
    assert life.write(10, 10).actions == (Do.QUEUE_WRITE, Do.RECORD)  # B again: pending
    assert life.phase is P.PENDING and life.digest is None and not life.closed
    other = Digest.of_bytes(b"y")
    assert _commit(life, other)[:1] == [Do.SETTLE]
    assert life.digest == other


def test_a_write_during_a_commit_waits_and_then_makes_the_file_pending() -> None:
    """Issue 14, item 2: every change during a commit is WAIT, never EBUSY; delivered
    again after it, it makes the file pending for the next close."""
    for stage in ("settling", "uploading"):
        for event in (E.WRITE, E.TRUNCATE, E.OPEN_WRITE, E.OPEN_TRUNCATE, E.UNLINK):
            life = FileState()
            open_(life, write=True)
            life.commit()
            if stage == "uploading":
                life.settled()
            assert life.handle(event).wait
            assert life.phase in COMMITTING  # nothing changed
            if stage == "uploading":
                life.uploaded(DIGEST)
            else:
                life.aborted()
            step = life.handle(event)
            assert not step.wait and step.refuse is None
            if event is not E.OPEN_WRITE and event is not E.UNLINK:
                assert life.phase is P.PENDING and life.digest is None


def test_fsync_through_a_read_only_descriptor_retries_a_failed_upload() -> None:
    """Issue 14, item 3: a pending file whose upload failed is CLOSED; a COMMIT (the
    driver sends one for any fsync, whatever the descriptor's mode) uploads it again."""
    life = FileState()
    open_(life, write=True)
    life.write(0, 0)
    life.commit()
    life.settled()
    life.upload_failed()
    assert life.phase is P.CLOSED and life.closed
    life.release(wrote=True)
    assert life.unused().actions == (Do.CLOSE_FD,)  # kept, spooled, for fsync
    assert open_(life, write=False).actions == ()
    assert life.commit().actions == (Do.SETTLE,)
    assert life.settled().actions == (Do.MARK_CLOSED, Do.UPLOAD)
    life.uploaded(DIGEST)
    assert life.phase is P.COMMITTED_SPOOLED


def test_a_commit_cancelled_while_settling_leaves_the_file_as_it_was() -> None:
    for before in (P.PENDING, P.CLOSED, P.REFUSED):
        life = in_phase(before)
        life.commit()
        assert life.closed is (before is not P.PENDING)
        life.aborted()
        assert life.phase is before


def test_a_lost_write_is_owed_until_a_truncate_says_what_the_file_holds() -> None:
    """A write that failed after it was answered: reported once by the next write,
    every write past the cut and every commit report the loss until a truncate to at
    most the file's size; the commit still commits what the file holds."""
    life = FileState()
    open_(life, write=True)
    life.write(0, 0)
    failure = OSError(errno.ENOSPC, "full")
    assert life.spool_failed(failure, cut=True).actions == (Do.TRUNCATE_SPOOL, Do.STOP_SPOOLER)
    assert life.write(0, 100).report is failure  # once
    assert life.write(200, 100).refuse == errno.ENOSPC  # past the cut: a hole
    assert life.write(100, 100).actions == (Do.QUEUE_WRITE,)  # at the end: fine
    life.commit()
    life.settled()
    assert life.uploaded(DIGEST).report is failure  # committed, and the loss reported
    assert life.phase is P.COMMITTED_SPOOLED
    life.truncate(50, 200)
    assert life.lost is None and life.write_error is None
    assert _commit(life)


def test_a_loss_found_while_settling_is_decided_as_in_the_phase_before() -> None:
    life = in_phase(P.CLOSED)
    life.commit()
    failure = OSError(errno.ENOSPC, "full")
    step = life.spool_failed(failure, cut=True)
    assert step.actions == (Do.TRUNCATE_SPOOL, Do.RECORD, Do.STOP_SPOOLER)
    assert life.phase is P.SETTLING and life.before is P.PENDING and not life.closed
    assert life.settled().actions == (Do.MARK_CLOSED, Do.UPLOAD)  # what is left, committed


def test_a_direct_write_that_does_not_match_is_dropped_at_its_last_release() -> None:
    life = FileState(direct=True)
    open_(life, write=True)
    open_(life, write=True)  # a shell's duplicate
    life.commit()
    life.settled()
    assert life.mismatch().actions == ()
    assert life.phase is P.REFUSED
    life.release(wrote=True)
    life.unused()
    assert life.write(0, 0).actions == (Do.QUEUE_WRITE, Do.RECORD)  # set right
    assert _commit(life)
    life.release(wrote=True)
    assert life.unused().actions == (Do.DISCARD,)
    refused = FileState(direct=True)
    open_(refused, write=True)
    refused.commit()
    refused.settled()
    refused.mismatch()
    refused.release(wrote=True)
    assert refused.unused().actions == (Do.DISCARD,) and refused.phase is P.GONE
    short = FileState(direct=True)  # lost bytes: it cannot match its name
    open_(short, write=True)
    short.spool_failed(OSError(errno.ENOSPC, "full"), cut=True)
    short.commit()
    assert short.settled().report is not None and short.phase is P.REFUSED
    never = FileState(direct=True)  # abandoned before any close
    open_(never, write=True)
    never.release(wrote=True)
    assert never.unused().actions == (Do.DISCARD,) and never.phase is P.GONE


def test_unlink_keeps_an_open_file_until_its_last_release() -> None:
    life = FileState()
    open_(life, write=True)
    assert life.unlink().actions == (Do.STOP_SPOOLER, Do.FORGET)
    assert life.write(0, 0).actions == (Do.QUEUE_WRITE,)  # still written, never committed
    assert life.commit().actions == () and life.phase is P.UNLINKED
    life.release(wrote=True)
    assert life.unused().actions == (Do.DISCARD,) and life.phase is P.GONE
    closed = FileState()
    assert closed.unlink().actions == (Do.STOP_SPOOLER, Do.FORGET, Do.DISCARD)


def test_memo_and_restore_undo_a_step() -> None:
    for phase, event in itertools.product(Phase, Event):
        life = in_phase(phase)
        memo = life.memo()
        with contextlib.suppress(LifecycleError):
            life.handle(event)
        life.restore(memo)
        assert life.memo() == memo


def test_a_release_without_an_open_is_a_bug() -> None:
    with pytest.raises(LifecycleError):
        FileState().release(wrote=False)
