"""Work done behind the trio thread, in order, in worker threads, with bounded memory.

``ByteBudget`` bounds the bytes waiting for workers (to be hashed, or to land in a spool
file); ``Behind`` is a queue taken in order by one worker task at a time, which
``HashBehind`` and ``SpoolWriter`` build on.

Concurrency notes: used only from the mount's trio thread (the workers' threads see only
the batches handed to them). Producers ``take`` before they queue bytes and wait in
``room`` while more than ``limit`` are queued; workers ``give_back`` what they are done
with, which wakes the waiters. A producer queues first and waits after, so one write
larger than the limit still goes through. A ``Behind`` starts a worker task when the
first item is queued and none runs; the worker ends when the queue is empty, so at most
one runs per queue and the items are handled in the order they came.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

QUEUE_LIMIT = 16 << 20
Item = TypeVar("Item")


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


class Behind(Generic[Item]):
    """A queue of items taken in order by one worker task at a time (``_work``, which a
    subclass writes: it takes items from ``_queue``, gives their bytes back to the budget,
    calls ``_wake`` after each batch and sets ``_working`` to False when it ends)."""

    def __init__(self, nursery: trio.Nursery, budget: ByteBudget) -> None:
        self._nursery = nursery
        self._budget = budget
        self._queue: list[Item] = []
        self._working = False
        self._progress = trio.Event()

    def _enqueue(self, item: Item, nbytes: int) -> None:
        """Queue an item of ``nbytes`` and start a worker if none runs."""
        self._queue.append(item)
        self._budget.take(nbytes)
        if not self._working:
            self._working = True
            self._nursery.start_soon(self._work)

    async def keep_up(self) -> None:
        """Wait while the shared budget is over its limit."""
        await self._budget.room()

    async def _idle(self) -> None:
        """Wait until no worker runs (everything queued so far is done with)."""
        while self._working:
            await self._progress.wait()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _work(self) -> None:
        raise NotImplementedError
