"""A bound on bytes waiting for a worker thread (to be hashed, or to land in a spool file).

Concurrency notes: used only from the mount's trio thread. Producers ``take`` before they
queue bytes and wait in ``room`` while more than ``limit`` are queued; workers
``give_back`` what they are done with, which wakes the waiters. A producer queues first
and waits after, so one write larger than the limit still goes through.
"""

from __future__ import annotations

import trio

QUEUE_LIMIT = 16 << 20


class ByteBudget:
    """How many bytes may wait for the workers that share it."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.queued = 0
        self._progress = trio.Event()

    def take(self, nbytes: int) -> None:
        self.queued += nbytes

    def give_back(self, nbytes: int) -> None:
        self.queued -= nbytes
        self._progress.set()
        self._progress = trio.Event()

    async def room(self) -> None:
        """Wait until no more than ``limit`` bytes are queued."""
        while self.queued > self.limit:
            await self._progress.wait()
