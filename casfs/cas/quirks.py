"""What the client has learned about how one remote bends the REAPI rules.

One ``RemoteQuirks`` is shared by every client of one endpoint (a mount has one client per
instance name): a habit learned through one instance holds for all, so each is paid for
once. Each lesson is learned once and never unlearned, and is logged once, at warning
level, naming the remote.

All of it is touched from the one trio thread that owns the clients; ``probing`` keeps two
tasks from probing the same habit at once.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import trio

log = logging.getLogger("casfs.cas")

# The block size of servers that serve ranged reads in whole blocks only.
READ_ALIGNMENT = 1 << 20


def is_aligned(offset: int, end: int, size: int) -> bool:
    """Whether a ranged read of ``[offset, end)`` of a blob of ``size`` bytes is in whole
    blocks: it starts on a block boundary and ends on one or at the blob's end."""
    return offset % READ_ALIGNMENT == 0 and (end % READ_ALIGNMENT == 0 or end >= size)


def aligned_window(offset: int, end: int, size: int) -> tuple[int, int]:
    """The smallest whole-block range that holds ``[offset, end)``, clamped to ``size``."""
    start = offset - offset % READ_ALIGNMENT
    stop = -(-end // READ_ALIGNMENT) * READ_ALIGNMENT
    return start, min(stop, size)


class SizeCheck(enum.Enum):
    """How the remote's FindMissingBlobs treats the size of a digest, and what the client
    can do about it."""

    UNKNOWN = "not known yet"
    BY_DIGEST = "by digest"  # as REAPI says: a wrong size is missing
    BY_HASH = "by hash"  # the size is ignored; sizes are confirmed by reading
    BY_HASH_DELETING = "by hash, deleting"  # ignored, and a read past a blob's end deletes it
    NOT_PROBED = "not probed"  # ignored, and whether a read may delete could not be tested

    @property
    def trusted(self) -> bool:
        """Whether a blob FindMissingBlobs reports present is present at its size."""
        return self is SizeCheck.BY_DIGEST


_SIZE_CHECK_LESSONS = {
    SizeCheck.BY_HASH: "the size of a blob is confirmed by reading its last byte before the "
    "blob is shown",
    SizeCheck.BY_HASH_DELETING: "a read past a blob's end under a wrong size deletes the "
    "blob, so sizes cannot be confirmed: a wrong size shows a file, and reading it deletes "
    "the blob",
    SizeCheck.NOT_PROBED: "sizes are not confirmed",
}


@dataclass
class RemoteQuirks:
    """The habits of one remote learned so far. ``may_store_probe``: whether the client may
    store a tiny blob of its own to learn them (not for a read-only mount)."""

    remote: str
    may_store_probe: bool = True
    aligned_reads: bool = False  # ranged reads only in whole READ_ALIGNMENT blocks
    size_check: SizeCheck = SizeCheck.UNKNOWN
    probing: trio.Lock = field(default_factory=trio.Lock)

    def read_window(self, offset: int, end: int, size: int) -> tuple[int, int]:
        """The range to ask for to get ``[offset, end)``: itself, or for a remote that
        reads in whole blocks, the aligned window around it (the caller trims)."""
        if self.aligned_reads:
            return aligned_window(offset, end, size)
        return offset, end

    def learn_aligned_reads(self, why: str) -> None:
        """The remote answered a read that was not in whole blocks with ``why``."""
        if not self.aligned_reads:
            self.aligned_reads = True
            log.warning(
                "%s serves ranged reads only in whole %d KiB blocks (%s): reads are aligned "
                "from now on and trimmed",
                self.remote,
                READ_ALIGNMENT >> 10,
                why,
            )

    def learn_size_check(self, check: SizeCheck, why: str = "") -> None:
        """FindMissingBlobs was found to check sizes as ``check`` says (``why``: what made
        a probe impossible)."""
        if self.size_check is not SizeCheck.UNKNOWN:
            return
        self.size_check = check
        if check is SizeCheck.BY_DIGEST:
            log.debug("%s answers FindMissingBlobs by digest", self.remote)
            return
        log.warning(
            "%s answers FindMissingBlobs by hash alone, whatever the size%s: %s",
            self.remote,
            f" ({why})" if why else "",
            _SIZE_CHECK_LESSONS[check],
        )
