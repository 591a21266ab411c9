"""Hashing behind the writes: the digest is that of the bytes fed, in order, and the queue
stays bounded."""

from __future__ import annotations

import os

import trio

from casfs.digest import Digest, DigestFunction
from casfs.fs.behind import ByteBudget
from casfs.fs.hashbehind import INLINE_BYTES, HashBehind


def test_digest_of_mixed_writes_in_order() -> None:
    pieces = [os.urandom(n) for n in (10, INLINE_BYTES + 1, 3, 1 << 20, 0, 5000, 2 << 20)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for function in (DigestFunction.SHA256, DigestFunction.BLAKE3):
                hasher = HashBehind(function, nursery)
                for piece in pieces:
                    await hasher.feed(piece)
                assert hasher.size == sum(map(len, pieces))
                expected = Digest.of_bytes(b"".join(pieces), function)
                assert await hasher.digest() == expected

    trio.run(main)


def test_fast_writers_wait_for_the_hashing_within_one_budget() -> None:
    budget = ByteBudget(4 << 20)
    piece = os.urandom(1 << 20)
    writers = 6

    async def main() -> None:
        peak = 0
        async with trio.open_nursery() as nursery:
            hashers = [HashBehind(DigestFunction.SHA256, nursery, budget) for _ in range(writers)]

            async def write(hasher: HashBehind) -> None:
                nonlocal peak
                for _ in range(16):
                    await hasher.feed(piece)
                    peak = max(peak, budget.queued)

            async with trio.open_nursery() as writing:
                for hasher in hashers:
                    writing.start_soon(write, hasher)
            for hasher in hashers:
                assert await hasher.digest() == Digest.of_bytes(piece * 16)
        # Each writer may add one piece past the limit before it waits.
        assert peak <= budget.limit + writers * len(piece)
        assert budget.queued == 0

    trio.run(main)


def test_cancelled_hashing_gives_no_digest() -> None:
    async def main() -> None:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                hasher = HashBehind(DigestFunction.SHA256, nursery, ByteBudget(64 << 20))
                for _ in range(16):
                    await hasher.feed(os.urandom(1 << 20))
                nursery.cancel_scope.cancel()  # the mount ends with bytes still queued
            assert await hasher.digest() is None
            outer.cancel_scope.cancel()

    trio.run(main)
