"""What the client has learned about how one remote bends the REAPI rules.

One ``RemoteQuirks`` is shared by every client of one endpoint (a mount has one client per
instance name): a habit learned through one instance holds for all, so each is paid for
once. It only ever moves from "plays by the rules" to "needs the workaround", never back,
and each lesson is logged once, at warning level, naming the remote.

All of it is touched from the one trio thread that owns the clients: no locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass
class RemoteQuirks:
    """The habits of one remote learned so far."""

    remote: str
    aligned_reads: bool = False  # ranged reads only in whole READ_ALIGNMENT blocks

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
