"""``Cursors`` (tvix streams parked between reads) and ``TvixRemote``'s assembly of the bytes
that stream past into blocks, against a stream in this process: the rules, quickly. The
real thing, through a mount, is tests/test_mount_tvix.py."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator

import pytest
import trio
import trio.testing

from casfs.cas.calls import Chunk
from casfs.cas.errors import DataLoss, Unavailable
from casfs.cas.tvixreads import IDLE, MAX_PARKED, Cursors
from casfs.cas.tvixremote import TvixRemote
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestFunction

DATA = os.urandom(100_000)
DIGEST = Digest.of_bytes(DATA, DigestFunction.BLAKE3)
PIECE = 7_000  # what the fake server sends per message


class Server:
    """Whole-blob streams of DATA; the next streams opened fail after as many pieces as
    ``failing`` says, one value each."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.failing: list[int] = []
        self.gate: trio.Event | None = None  # while set and not open, pieces wait for it

    async def stream(self, digest: Digest) -> AsyncGenerator[Chunk, None]:
        self.opened += 1
        fail_after, sent = (self.failing.pop(0) if self.failing else None), 0
        try:
            for start in range(0, len(DATA), PIECE):
                if fail_after is not None and sent == fail_after:
                    raise Unavailable("the server ended the stream")
                await (self.gate.wait() if self.gate is not None else trio.lowlevel.checkpoint())
                yield DATA[start : start + PIECE]
                sent += 1
        finally:
            self.closed += 1


async def read(cursors: Cursors, offset: int, end: int, passing: list[tuple[int, bytes]]) -> bytes:
    pieces = [
        bytes(p)
        async for p in cursors.read(DIGEST, offset, end, lambda o, d: passing.append((o, bytes(d))))
    ]
    return b"".join(pieces)


def test_a_read_goes_on_with_the_stream_the_last_one_left() -> None:
    async def main() -> None:
        server = Server()
        cursors = Cursors(server.stream)
        passing: list[tuple[int, bytes]] = []
        assert await read(cursors, 0, 10_000, passing) == DATA[:10_000]
        assert await read(cursors, 10_000, 30_001, passing) == DATA[10_000:30_001]
        assert await read(cursors, 50_000, 60_000, passing) == DATA[50_000:60_000]
        assert (server.opened, cursors.resumed) == (1, 2)
        assert b"".join(d for _, d in passing) == DATA[30_001:50_000]  # streamed past
        assert passing[0][0] == 30_001
        assert await read(cursors, 20, 30, passing) == DATA[20:30]  # behind: a new stream
        assert server.opened == 2
        assert await read(cursors, 60_000, len(DATA), []) == DATA[60_000:]  # to the end
        await cursors.aclose()
        assert server.closed == server.opened

    trio.run(main)


def test_a_read_behind_a_stream_in_use_waits_for_it() -> None:
    async def main() -> None:
        server = Server()
        cursors = Cursors(server.stream)
        results: dict[str, bytes] = {}

        async def one(name: str, offset: int, end: int) -> None:
            results[name] = await read(cursors, offset, end, [])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "first", 0, 40_000)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, "next", 40_000, 80_000)
        assert results == {"first": DATA[:40_000], "next": DATA[40_000:80_000]}
        assert server.opened == 1
        await cursors.aclose()

    trio.run(main)


def test_of_reads_waiting_for_a_stream_the_nearest_goes_first() -> None:
    async def main() -> None:
        server = Server()
        cursors = Cursors(server.stream)
        results: dict[str, bytes] = {}

        async def one(name: str, offset: int, end: int) -> None:
            results[name] = await read(cursors, offset, end, [])

        server.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "first", 0, 20_000)  # held up by the gate
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, "far", 60_000, 70_000)  # asks first, waits its turn
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, "near", 20_000, 60_000)
            await trio.testing.wait_all_tasks_blocked()
            server.gate.set()
        assert results == {
            "first": DATA[:20_000],
            "near": DATA[20_000:60_000],
            "far": DATA[60_000:70_000],
        }
        assert server.opened == 1
        await cursors.aclose()

    trio.run(main)


def test_parked_streams_are_bounded_and_expire() -> None:
    async def main() -> None:
        server = Server()
        cursors = Cursors(server.stream)
        for _ in range(MAX_PARKED + 2):  # each from the start: a stream each, parked
            assert await read(cursors, 0, 5, []) == DATA[:5]
        assert server.opened - server.closed == MAX_PARKED
        await trio.sleep(IDLE + 1)
        assert await read(cursors, 5, 10, []) == DATA[5:10]  # the idle ones are gone
        assert server.opened == MAX_PARKED + 3
        assert server.opened - server.closed == 1
        await cursors.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_stream_that_fails_is_replaced_once_per_read() -> None:
    async def main() -> None:
        server = Server()
        cursors = Cursors(server.stream)
        server.failing = [2]  # ended by the server while parked at 14,000
        assert await read(cursors, 0, 14_000, []) == DATA[:14_000]
        assert await read(cursors, 14_000, 50_000, []) == DATA[14_000:50_000]
        assert server.opened == 2
        server.failing = [3]  # fails mid-read: the new stream goes on where it stopped
        passing: list[tuple[int, bytes]] = []
        assert await read(cursors, 0, 50_000, passing) == DATA[:50_000]
        assert server.opened == 4  # behind the parked one: a new stream; then its successor
        server.failing = [1, 1]  # and its successor fails too: the error is the read's
        with pytest.raises(Unavailable):
            await read(cursors, 0, 50_000, [])
        await cursors.aclose()
        assert server.closed == server.opened

    trio.run(main)


def test_a_stream_that_ends_short_is_data_loss() -> None:
    async def short(digest: Digest) -> AsyncGenerator[Chunk, None]:
        yield DATA[:1000]

    async def main() -> None:
        with pytest.raises(DataLoss):
            await read(Cursors(short), 0, 5000, [])

    trio.run(main)


@pytest.mark.parametrize("pieces", [[100_000], [1, 4095, 4096, 5000, 90_808], [3] * 33_334])
def test_bytes_that_stream_past_become_whole_blocks(pieces: list[int]) -> None:
    async def main() -> None:
        remote = TvixRemote(RemoteConfig("grpc+http://127.0.0.1:1"))
        kept: list[tuple[int, bytes]] = []
        remote.keep_passing(4096, lambda digest, index, data: kept.append((index, data)))
        collect = remote._collector(DIGEST)
        assert collect is not None
        position = 0
        for size in pieces:
            collect(position, memoryview(DATA)[position : position + size])
            position += size
        assert [index for index, _ in kept] == list(range(len(DATA) // 4096))
        assert all(data == DATA[i * 4096 : (i + 1) * 4096] for i, data in kept)
        await remote.aclose()

    trio.run(main)


def test_passing_bytes_from_mid_block_start_at_the_next_block() -> None:
    async def main() -> None:
        remote = TvixRemote(RemoteConfig("grpc+http://127.0.0.1:1"))
        kept: list[int] = []
        remote.keep_passing(4096, lambda digest, index, data: kept.append(index))
        collect = remote._collector(DIGEST)
        assert collect is not None
        collect(100, memoryview(DATA)[100:9000])
        collect(20_000, memoryview(DATA)[20_000:30_000])  # a gap: starts over
        assert kept == [1, 5, 6]
        await remote.aclose()

    trio.run(main)
