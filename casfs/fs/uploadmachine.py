"""One file's lifecycle, run by the table of ``uploadstate.py`` (where the phases, the
events, the actions and the state diagram are): ``FileState`` delivers each event to the
table, keeps the data the transitions decide by (open counts, the committed digest, the
errors owed to the program) and returns a ``Step``, what the driver
(``uploaddriver.py``) is to do. No I/O and no trio here either.

Concurrency notes: a ``FileState`` is changed only in the mount's trio thread, and only
by its methods, each of which decides and changes it with no checkpoint; the driver
awaits between events (its actions), never inside one.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from casfs.digest import Digest
from casfs.fs.uploadstate import (
    CHANGES,
    CLOSED,
    COMMITTING,
    KEEPS_DIGEST,
    SPOOLED,
    TABLE,
    Do,
    Event,
    Go,
    LifecycleError,
    Outcome,
    Phase,
    Refuse,
    Wait,
)

P = Phase
E = Event


@dataclass(frozen=True, slots=True)
class Step:
    """What a ``FileState`` method decided: actions to do, a wait, a refusal (``refuse``,
    an errno; nothing changed), or an error to report after the actions (``report``)."""

    actions: tuple[Do, ...] = ()
    wait: bool = False
    refuse: int | None = None
    report: OSError | None = None


class FileState:
    """One file's lifecycle: its phase and the data its transitions decide by."""

    def __init__(
        self, phase: Phase = P.PENDING, *, direct: bool = False, digest: Digest | None = None
    ) -> None:
        if (digest is not None) != (phase in (P.COMMITTED, P.COMMITTED_SPOOLED)):
            raise ValueError(f"a {phase.value} file with digest {digest}")
        self.phase = phase
        self.direct = direct  # a direct write of blobs/<hash>/<size>: checked against it
        self.digest = digest  # of the committed content; None once it changes
        self.opens = 0  # descriptors open
        self.writers = 0  # of those, the writable ones
        self.before = phase  # while a commit runs: the phase it came from
        self.write_error: OSError | None = None  # reported once
        self.lost: OSError | None = None  # reported until a truncate says what the file holds

    def __repr__(self) -> str:
        return f"<FileState {self.phase.name} opens={self.opens} writers={self.writers}>"

    @property
    def closed(self) -> bool:
        """Whether a close asked for the content the spool holds (the spool metadata)."""
        if self.phase is P.SETTLING:
            return self.before in CLOSED
        return self.phase in CLOSED

    @property
    def committing(self) -> bool:
        return self.phase in COMMITTING

    @property
    def spooled(self) -> bool:
        """Whether the file has a spool file, by its phase."""
        return self.phase in SPOOLED

    # -- the table ----------------------------------------------------------------------

    def outcome(self, event: Event) -> Outcome:
        """What ``event`` leads to now, without changing anything."""
        try:
            return TABLE[self.phase][event]
        except KeyError:
            phase = self.phase.value
            raise LifecycleError(f"{event.name} cannot happen to a {phase} file") from None

    def handle(self, event: Event) -> Step:
        """Deliver ``event``: change the phase as the table says and return the actions."""
        outcome = self.outcome(event)
        if isinstance(outcome, Wait):
            return Step(wait=True)
        if isinstance(outcome, Refuse):
            return Step(refuse=outcome.errno)
        if event in CHANGES or outcome.next not in KEEPS_DIGEST:
            self.digest = None  # what the CAS holds is no longer the file
        self.phase = outcome.next
        return Step(outcome.actions)

    def _then_unused(self, step: Step) -> Step:
        """After a step that may leave the file with no descriptor: its last release."""
        if self.opens or step.wait or step.refuse is not None:
            return step
        more = self.unused()
        return Step(step.actions + more.actions, report=step.report)

    # -- descriptors --------------------------------------------------------------------

    def open(self, *, write: bool, truncate: bool) -> Step:
        """A descriptor is being opened (the driver first lands every answered write, and
        counts it with ``opened`` once the actions are done)."""
        event = E.OPEN_READ if not write else E.OPEN_TRUNCATE if truncate else E.OPEN_WRITE
        step = self.handle(event)
        if event is E.OPEN_TRUNCATE and not step.wait and step.refuse is None:
            self.lost = self.write_error = None  # written anew: old failures are no news
        return step

    def opened(self, *, write: bool) -> None:
        """The descriptor is open: count it (``release`` gives it back)."""
        self.opens += 1
        self.writers += write

    def release(self, *, wrote: bool) -> Step:
        """A descriptor is gone. The last writer's lands the answered writes; then the
        driver calls ``unused`` (after the wait: a descriptor may open meanwhile)."""
        if self.opens <= 0 or (wrote and self.writers <= 0):
            raise LifecycleError(f"a release of a {self!r}")
        self.opens -= 1
        if wrote:
            self.writers -= 1
            if not self.writers:
                return Step((Do.SETTLE, Do.STOP_SPOOLER))
        return Step()

    def unused(self) -> Step:
        """If no descriptor is open: the last release (a direct write never closed, or
        refused, is abandoned; a committed or unlinked file drops its spool)."""
        if self.opens:
            return Step()
        return self.handle(E.RELEASED_DIRECT if self.direct else E.RELEASED)

    # -- changes ------------------------------------------------------------------------

    def write(self, offset: int, size: int) -> Step:
        """A write at ``offset`` of a file of ``size`` bytes."""
        outcome = self.outcome(E.WRITE)
        if not isinstance(outcome, Go):
            return self.handle(E.WRITE)
        if self.write_error is not None:
            error, self.write_error = self.write_error, None
            return Step(report=error)
        if self.lost is not None and offset > size:
            # The kernel turned the failure of one part of a large write into a short
            # write, and the program goes on past bytes it believes are written.
            return Step(refuse=self.lost.errno or errno.EIO)
        return self.handle(E.WRITE)

    def truncate(self, size: int, current: int) -> Step:
        """A truncate to ``size`` of a file of ``current`` bytes."""
        step = self.handle(E.TRUNCATE)
        if step.wait or step.refuse is not None:
            return step
        if size <= current:
            self.lost = None  # the file ends before the lost bytes: it holds what it should
        if size == 0:
            self.write_error = None
        return step

    def spool_failed(self, error: OSError, *, cut: bool) -> Step:
        """Answered writes failed to land; ``cut``: the file must be cut where they began."""
        self.write_error = self.lost = error
        actions: tuple[Do, ...] = ()
        if cut and self.phase is P.SETTLING:  # decided as in the phase the commit left
            self.outcome(E.CUT)
            outcome = TABLE[self.before][E.CUT]
            assert isinstance(outcome, Go)
            self.before, actions = outcome.next, outcome.actions
        elif cut:
            actions = self.handle(E.CUT).actions
        return Step((*actions, Do.STOP_SPOOLER))

    def unlink(self) -> Step:
        """Taken out of its tree; a file with no descriptor loses its spool at once."""
        return self._then_unused(self.handle(E.UNLINK))

    def move(self) -> Step:
        return self.handle(E.MOVE)

    # -- commits ------------------------------------------------------------------------

    def commit(self) -> Step:
        """A close or fsync asks for a commit: SETTLE, then ``settled``; nothing to do
        for a committed, unlinked or gone file (``phase`` says which)."""
        before = self.phase
        step = self.handle(E.COMMIT)
        if self.phase is P.SETTLING:
            self.before = before
        return step

    def settled(self) -> Step:
        """The commit's writes have landed: UPLOAD, then ``uploaded``, ``upload_failed``
        or ``mismatch``. A direct write that lost bytes cannot match its name."""
        if self.direct and self.lost is not None:
            step = self.handle(E.SETTLED_SHORT)
            return Step(step.actions, report=self.lost)
        return self.handle(E.SETTLED)

    def aborted(self) -> Step:
        """The commit ended before its upload (an error landing the writes, or
        cancellation): the file is as it was."""
        self.outcome(E.ABORTED)
        self.phase = self.before
        return Step()

    def uploaded(self, digest: Digest) -> Step:
        """The blob is in the CAS. What was lost before is committed as the file holds
        it, and reported: ``write_error`` once, ``lost`` until a truncate clears it."""
        step = self.handle(E.UPLOADED)
        self.digest = digest
        failed = self.write_error or self.lost
        self.write_error = None
        return self._then_unused(Step(step.actions, report=failed))

    def upload_failed(self) -> Step:
        """The upload failed or was cancelled: pending, for fsync, a close or the next
        mount."""
        return self._then_unused(self.handle(E.UPLOAD_FAILED))

    def mismatch(self) -> Step:
        """A direct write's content is not its name: nothing is stored (the driver
        reports EIO), and with no descriptor open it is dropped."""
        return self._then_unused(self.handle(E.MISMATCH))

    # -- undo ---------------------------------------------------------------------------

    def memo(self) -> tuple[object, ...]:
        """Everything a transition may change, for ``restore``."""
        return (self.phase, self.before, self.digest, self.opens, self.writers,
                self.write_error, self.lost)  # fmt: skip

    def restore(self, memo: tuple[object, ...]) -> None:
        """Back to ``memo``: the driver's first action failed, so nothing changed."""
        (self.phase, self.before, self.digest, self.opens, self.writers,
         self.write_error, self.lost) = memo  # type: ignore[assignment]  # fmt: skip
