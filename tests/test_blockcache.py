"""The block cache's logic alone: single flight, readahead, random reads, failures."""

from __future__ import annotations

import os

import trio

from casfs.cas.errors import CasError, Unavailable
from casfs.digest import Digest
from casfs.fs.blockcache import BlockCache, Readahead

BLOCK = 4096
DATA = os.urandom(64 * BLOCK + 100)
DIGEST = Digest.of_bytes(DATA)


class Source:
    """Serves DATA, counting fetches; ``fail`` makes the next fetches fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = 0

    async def fetch(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        await trio.sleep(0.01)
        if self.fail:
            self.fail -= 1
            raise Unavailable("server down")
        return DATA[offset : offset + length]


def run(scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache = BlockCache(nursery, block_size=BLOCK, capacity=32 * BLOCK)
            await scenario(cache, Source())
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_concurrent_readers_share_one_fetch() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await cache.read(source.fetch, DIGEST, 10, 100))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(reader)
        assert results == [DATA[10:110]] * 8
        assert source.calls == [(0, BLOCK)]

    run(scenario)


def test_sequential_reads_look_further_ahead_each_time() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        data = b""
        for offset in range(0, len(DATA), BLOCK):
            data += await cache.read_file(source.fetch, DIGEST, offset, BLOCK, readahead)
        assert data == DATA
        assert readahead.window == cache.max_window  # it grew all the way
        assert cache.stats.prefetches > 0 and cache.stats.misses <= 2
        assert sorted(source.calls) == [(i * BLOCK, BLOCK) for i in range(65)]  # each once

    run(scenario)


def test_random_reads_fetch_only_their_range() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        for offset in (40 * BLOCK + 7, 3 * BLOCK, 50 * BLOCK + 1):
            got = await cache.read_file(source.fetch, DIGEST, offset, 512, readahead)
            assert got == DATA[offset : offset + 512]
        assert source.calls == [(40 * BLOCK + 7, 512), (3 * BLOCK, 512), (50 * BLOCK + 1, 512)]
        assert cache.stats.prefetches == 0

    run(scenario)


def test_failures_are_not_cached() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        source.fail = 1
        try:
            await cache.read(source.fetch, DIGEST, 0, 10)
        except CasError as error:
            assert "server down" in str(error)
        else:
            raise AssertionError("the failure was swallowed")
        assert await cache.read(source.fetch, DIGEST, 0, 10) == DATA[:10]
        assert len(source.calls) == 2

    run(scenario)


def test_reads_past_the_end_and_across_blocks() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        assert await cache.read(source.fetch, DIGEST, len(DATA) - 5, 100) == DATA[-5:]
        assert await cache.read(source.fetch, DIGEST, len(DATA), 100) == b""
        across = await cache.read(source.fetch, DIGEST, BLOCK - 3, 3 * BLOCK)
        assert across == DATA[BLOCK - 3 : 4 * BLOCK - 3]

    run(scenario)
