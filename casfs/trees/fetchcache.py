"""``FetchCache``: what a Directory source keeps of what it fetched. An LRU bounded by
the cost of what it holds, and one fetch of a key at a time (single flight).

Used by ``TreeSource`` (REAPI Directories by digest) and ``TvixTreeSource`` (tvix
Directories by hash).

Concurrency notes: trio thread only. ``once`` lets one task fetch a key; the others
asking meanwhile wait for it and then look again, so a fetch that failed or was cancelled
is retried by the next asker, not reported to it. Cancelling a waiter cancels only its
wait. Memory: at most ``capacity`` by ``cost``, least recently used out first, but the
newest entry always stays (one larger than the whole capacity is held until the next).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FetchCache(Generic[K, V]):
    """Values by key, least recently used out first once ``capacity`` is exceeded."""

    def __init__(self, capacity: int, cost: Callable[[V], int]) -> None:
        self.capacity = capacity
        self._cost = cost
        self._values: OrderedDict[K, V] = OrderedDict()
        self._held = 0
        self._flights: dict[K, trio.Event] = {}

    def __len__(self) -> int:
        return len(self._values)

    @property
    def held(self) -> int:
        """The cost of what is held now."""
        return self._held

    def get(self, key: K) -> V | None:
        """The value if held (now the most recently used), else None."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def keep(self, key: K, value: V) -> None:
        """Hold ``value``; a key held already keeps its value and is used now."""
        if key in self._values:
            self._values.move_to_end(key)
            return
        self._values[key] = value
        self._held += self._cost(value)
        while self._held > self.capacity and len(self._values) > 1:
            _, old = self._values.popitem(last=False)
            self._held -= self._cost(old)

    async def once(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``: held, or fetched by ``fetch`` (which keeps it) unless
        another task is fetching it, which this one then waits for. Raises what ``fetch``
        raised for this caller's own fetch."""
        while True:
            found = self.get(key)
            if found is not None:
                return found
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.wait()  # then look again: the fetch may have failed
        done = self._flights[key] = trio.Event()
        try:
            return await fetch()
        finally:
            del self._flights[key]
            done.set()
