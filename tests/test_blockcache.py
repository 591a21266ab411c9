"""The block cache's logic alone: single flight, readahead, random reads, failures. Trio's
MockClock runs the sources' delays in virtual time: a run takes no real time, and a hang
fails at once (the clock jumps to the deadline when every task waits)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from casfs.cas.errors import CasError, DataLoss, Unavailable
from casfs.digest import Digest
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.blocks.readahead import Readahead

BLOCK = 4096
DATA = os.urandom(64 * BLOCK + 100)
DIGEST = Digest.of_bytes(DATA)


class Source:
    """Serves DATA like a CasClient, counting fetches; ``fail`` makes the next ones fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.streams: list[tuple[int, int]] = []
        self.fail = 0

    def ranged(self, digest: Digest) -> bool:
        return True

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        await trio.sleep(0.01)
        if self.fail:
            self.fail -= 1
            raise Unavailable("server down")
        return DATA[offset : offset + length]

    async def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[bytes]:
        self.streams.append((offset, length))
        end = min(offset + length, len(DATA))
        for start in range(offset, end, 3000):  # pieces that straddle blocks
            await trio.sleep(0.001)
            yield DATA[start : min(start + 3000, end)]


def run(scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache = BlockCache(nursery, block_size=BLOCK, capacity=32 * BLOCK)
            await scenario(cache, Source())
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_concurrent_readers_share_one_fetch() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await cache.read(source, DIGEST, 10, 100))

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
            data += await cache.read_file(source, DIGEST, offset, BLOCK, readahead)
        assert data == DATA
        assert readahead.window == cache.max_window  # it grew all the way
        assert cache.stats.misses == 0 and not source.calls  # all came by streaming runs
        fetched = sorted(source.streams)
        assert sum(min(n, len(DATA) - o) for o, n in fetched) == len(DATA)  # each byte once
        assert len(fetched) < 65 // 4  # long runs, not a Read per block

    run(scenario)


def test_sequential_reads_leave_consumed_blocks_to_the_page_cache() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        half = BLOCK // 2
        for offset in range(0, 8 * BLOCK + half, half):  # 8.5 blocks, half a block at a time
            data = await cache.read_file(source, DIGEST, offset, half, readahead)
            assert data == DATA[offset : offset + half]
        # Blocks 0-7 were read to their end: the kernel has them and the cache let them go.
        # Block 8, read halfway, and the readahead past it are still there.
        assert not any((DIGEST, index) in cache.blocks for index in range(8))
        assert (DIGEST, 8) in cache.blocks
        assert cache.blocks.currsize < cache.blocks.maxsize

    run(scenario)


class RottenSource(Source):
    """Serves DATA with one byte changed, as a server with a corrupted disk would."""

    def __init__(self) -> None:
        super().__init__()
        rotten = bytearray(DATA)
        rotten[5 * BLOCK + 7] ^= 0xFF
        self.data = bytes(rotten)

    async def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[bytes]:
        end = min(offset + length, len(self.data))
        for start in range(offset, end, 3000):
            await trio.sleep(0.001)
            yield self.data[start : min(start + 3000, end)]


def test_a_blob_read_from_its_start_is_verified() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        for rotten in (False, True):
            feed: Source = RottenSource() if rotten else Source()
            readahead = Readahead()
            got = b""
            failed = None
            for offset in range(0, len(DATA), BLOCK):
                try:
                    got += await cache.read_file(feed, DIGEST, offset, BLOCK, readahead)
                except DataLoss as error:
                    failed = (offset, error)
                    break
            if not rotten:
                assert got == DATA and failed is None
                continue
            # Everything but the last block came through; the last one is held back.
            assert failed is not None and failed[0] == 64 * BLOCK
            with pytest.raises(DataLoss):  # and every later read of the blob fails
                await cache.read_file(Source(), DIGEST, 0, BLOCK, Readahead())
            assert not any(key[0] == DIGEST for key in cache.blocks)

    async def main() -> None:  # two caches: the good read must not mark the blob
        async with trio.open_nursery() as nursery:
            await scenario(BlockCache(nursery, block_size=BLOCK, capacity=32 * BLOCK), Source())
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_unaligned_reads_of_a_rotten_blob_fail_at_the_end() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        rotten = RottenSource()
        with pytest.raises(DataLoss):
            for offset in range(0, len(DATA), 3000):  # the last read is short, at the end
                await cache.read_file(rotten, DIGEST, offset, 3000, readahead)
        assert not cache.verification.active

    run(scenario)


def test_concurrent_readers_of_two_blobs_never_wait_forever() -> None:
    blobs = {}
    for n in range(2):
        data = os.urandom(5 * BLOCK - 10 - n)
        blobs[Digest.of_bytes(data)] = data

    class TwoBlobs(Source):
        async def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
            await trio.sleep(0.001)
            return blobs[digest][offset : offset + length]

        async def stream_range(
            self, digest: Digest, offset: int, length: int
        ) -> AsyncIterator[bytes]:
            data = blobs[digest]
            for start in range(offset, min(offset + length, len(data)), 3000):
                await trio.sleep(0.001)
                yield data[start : min(start + 3000, offset + length, len(data))]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache = BlockCache(nursery, block_size=BLOCK, capacity=64 * BLOCK, streams=2)
            source = TwoBlobs()
            got: dict[tuple[Digest, int], bytes] = {}

            async def read(digest: Digest, offset: int, readahead: Readahead) -> None:
                got[(digest, offset)] = bytes(
                    await cache.read_file(source, digest, offset, BLOCK, readahead)
                )

            with trio.fail_after(5):  # it hung in about one run in five before the fix
                async with trio.open_nursery() as readers:  # requests in flight at once
                    readaheads = {digest: Readahead() for digest in blobs}
                    for offset in range(0, 5 * BLOCK, BLOCK):
                        for digest in blobs:
                            readers.start_soon(read, digest, offset, readaheads[digest])
            for digest, data in blobs.items():
                assert b"".join(got[(digest, o)] for o in range(0, 5 * BLOCK, BLOCK)) == data
            nursery.cancel_scope.cancel()

    for _ in range(30):
        trio.run(main, clock=MockClock(autojump_threshold=0))


def test_a_reader_that_starts_midway_is_not_verified_and_leaves_no_verifier() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        start = 10 * BLOCK
        got = b""
        for offset in range(start, len(DATA), BLOCK):
            got += await cache.read_file(source, DIGEST, offset, BLOCK, readahead)
        assert got == DATA[start:]
        assert not cache.verification.active

    run(scenario)


def test_random_reads_fetch_only_their_range() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        readahead = Readahead()
        for offset in (40 * BLOCK + 7, 3 * BLOCK, 50 * BLOCK + 1):
            got = await cache.read_file(source, DIGEST, offset, 512, readahead)
            assert got == DATA[offset : offset + 512]
        assert source.calls == [(40 * BLOCK + 7, 512), (3 * BLOCK, 512), (50 * BLOCK + 1, 512)]
        assert cache.stats.prefetches == 0

    run(scenario)


def test_failures_are_not_cached() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        source.fail = 1
        try:
            await cache.read(source, DIGEST, 0, 10)
        except CasError as error:
            assert "server down" in str(error)
        else:
            raise AssertionError("the failure was swallowed")
        assert await cache.read(source, DIGEST, 0, 10) == DATA[:10]
        assert len(source.calls) == 2

    run(scenario)


def test_reads_past_the_end_and_across_blocks() -> None:
    async def scenario(cache: BlockCache, source: Source) -> None:
        assert await cache.read(source, DIGEST, len(DATA) - 5, 100) == DATA[-5:]
        assert await cache.read(source, DIGEST, len(DATA), 100) == b""
        across = await cache.read(source, DIGEST, BLOCK - 3, 3 * BLOCK)
        assert across == DATA[BLOCK - 3 : 4 * BLOCK - 3]

    run(scenario)
