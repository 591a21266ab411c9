"""``trees/fetchcache.py``: the Directory sources' LRU and single flight, without I/O."""

from __future__ import annotations

import trio
import trio.testing

from casfs.trees.fetchcache import FetchCache


def test_concurrent_askers_share_one_fetch() -> None:
    cache: FetchCache[str, bytes] = FetchCache(100, len)
    fetches = 0
    release = trio.Event()

    async def fetch() -> bytes:
        nonlocal fetches
        fetches += 1
        await release.wait()
        cache.keep("k", b"value")
        return b"value"

    async def main() -> list[bytes]:
        got: list[bytes] = []

        async def ask() -> None:
            got.append(await cache.once("k", fetch))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        return got

    assert trio.run(main) == [b"value"] * 5
    assert fetches == 1


def test_a_failed_fetch_is_retried_by_the_next_asker_not_reported_to_it() -> None:
    cache: FetchCache[str, bytes] = FetchCache(100, len)
    attempts: list[str] = []
    first_started = trio.Event()

    async def fetch() -> bytes:
        attempts.append("fetch")
        if len(attempts) == 1:
            first_started.set()
            await trio.lowlevel.checkpoint()
            raise OSError("the first fetch fails")
        cache.keep("k", b"second")
        return b"second"

    async def main() -> tuple[str, bytes]:
        outcome: list[object] = []

        async def first() -> None:
            try:
                await cache.once("k", fetch)
            except OSError as error:
                outcome.append(str(error))

        async def second() -> None:
            await first_started.wait()
            outcome.append(await cache.once("k", fetch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
        failed, value = outcome
        assert isinstance(failed, str) and isinstance(value, bytes)
        return failed, value

    assert trio.run(main) == ("the first fetch fails", b"second")
    assert attempts == ["fetch", "fetch"]


def test_least_recently_used_out_first_within_the_capacity() -> None:
    cache: FetchCache[str, bytes] = FetchCache(10, len)
    cache.keep("a", b"aaaa")
    cache.keep("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # now more recent than b
    cache.keep("c", b"cccc")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"aaaa", None, b"cccc")
    assert cache.held == 8 and len(cache) == 2
    cache.keep("huge", b"x" * 50)  # larger than the whole capacity: held until the next
    assert len(cache) == 1 and cache.get("huge") is not None


def test_a_held_key_keeps_its_first_value() -> None:
    key = "k"
    cache: FetchCache[str, bytes] = FetchCache(100, len)
    cache.keep(key, b"first")
    cache.keep(key, b"other")
    assert cache.get(key) == b"first" and cache.held == 5
