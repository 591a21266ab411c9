"""One fetch of one block, awaited by every reader that wants the block (single flight).

The fetch runs in the cache's nursery, not in a reader's task: a reader that is
cancelled stops waiting, and the flight goes on for the others (and fills the cache). A
failed flight caches nothing; each waiter gets the error, and the next read tries again.
"""

from __future__ import annotations

import trio

from casfs.cas.client import Chunk
from casfs.cas.errors import CasError


class Flight:
    """A block on its way: ``done`` is set once ``data`` or ``error`` is."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Chunk | None = None
        self.error: Exception | None = None

    async def wait(self) -> Chunk:
        """The block, or the fetch's error; cancelling the wait leaves the fetch alone."""
        await self.done.wait()
        if self.data is not None:
            return self.data
        if self.error is not None:
            raise self.error
        raise CasError("the fetch was cancelled (the mount is shutting down)")
