"""Verification of blobs read from their start.

A blob read from its start is hashed as its blocks land, in order (in a worker thread,
see ``hashbehind``), and the run that brings its last block holds that block back until
the hash is known (in a task of its own, outside the stream limiter: the runs before it
may still wait for a stream). A mismatch fails that read (EIO), drops the blob's blocks
and marks it corrupt for the life of the mount, so every later read that reaches casfs
fails too (the page cache may still serve the blocks before the last); the log says why.

Verification gives up quietly when the blocks stop coming in order (a reader that skips
ahead, an eviction, a failed fetch, bytes read around the cache): a random reader gets
unverified bytes. Blocks waiting to be hashed may outlive their eviction, within one
``ByteBudget`` (16 MiB) for all blobs.

Concurrency notes: everything runs in the mount's trio thread. Across a checkpoint (the
hash's ``keep_up`` and ``digest``, ``moved.wait``) the blob's verifier may have been
abandoned or replaced: code after one looks it up again (``self._verifiers.get(digest)
is verifier``) before it acts on it.
"""

from __future__ import annotations

import logging
from typing import Protocol

import cachetools
import trio

from casfs.cas.client import Chunk
from casfs.cas.errors import DataLoss
from casfs.digest import Digest
from casfs.fs.behind import ByteBudget
from casfs.fs.blocks.flight import Flight
from casfs.fs.blocks.lru import BlockKey
from casfs.fs.hashbehind import HashBehind

log = logging.getLogger("casfs.fs")
MAX_VERIFYING = 64  # blobs hashed at once, as readers read them from the start


class Blocks(Protocol):
    """What verification needs of the cache."""

    block_size: int

    def covered(self, digest: Digest, index: int) -> bool: ...

    def held(self, key: BlockKey) -> Chunk | None: ...

    def in_flight(self, key: BlockKey) -> bool: ...

    def land(self, key: BlockKey, flight: Flight, data: Chunk) -> None: ...

    def fail(self, key: BlockKey, flight: Flight, error: Exception | None) -> None: ...

    def drop(self, digest: Digest) -> None: ...


class _Verifier:
    """A blob's hash, fed its blocks in order as they land."""

    def __init__(self, digest: Digest, nursery: trio.Nursery, budget: ByteBudget) -> None:
        self.hasher = HashBehind(digest.function, nursery, budget)
        self.next = 0  # the index of the next block to feed
        self.moved = trio.Event()

    def wake(self) -> None:
        self.moved.set()
        self.moved = trio.Event()


class Verification:
    """The blobs being verified, and those found corrupt."""

    def __init__(self, blocks: Blocks, nursery: trio.Nursery) -> None:
        self._blocks = blocks
        self._nursery = nursery
        self._verifiers: dict[Digest, _Verifier] = {}
        self._budget = ByteBudget()  # bytes landed, not hashed yet, of all blobs
        self._corrupt: cachetools.LRUCache[Digest, bool] = cachetools.LRUCache(maxsize=10_000)

    @property
    def active(self) -> int:
        """How many blobs are being verified."""
        return len(self._verifiers)

    def _last(self, digest: Digest) -> int:
        return (digest.size - 1) // self._blocks.block_size

    def verifying(self, digest: Digest) -> bool:
        return digest in self._verifiers

    def unhashed(self, digest: Digest, index: int) -> bool:
        """Whether the block is one a verifier still waits for (it must stay cached)."""
        verifier = self._verifiers.get(digest)
        return verifier is not None and index >= verifier.next

    def check(self, digest: Digest) -> None:
        """Raise ``DataLoss`` for a blob found corrupt."""
        if digest in self._corrupt:
            raise DataLoss(f"{digest}: the server sent content that does not match it")

    async def keep_up(self, digest: Digest) -> None:
        """Wait while the blob's hashing is behind its budget (a run calls it per chunk)."""
        verifier = self._verifiers.get(digest)
        if verifier is not None:
            await verifier.hasher.keep_up()

    def start(self, digest: Digest) -> None:
        """A reader starts at the blob's beginning: hash it as its blocks come, unless some
        of them are here or coming already (they may be gone before they could be hashed)."""
        if (
            digest.size
            and digest.function.hashable
            and digest not in self._verifiers
            and not any(self._blocks.covered(digest, i) for i in range(self._last(digest) + 1))
        ):
            if len(self._verifiers) >= MAX_VERIFYING:  # readers that stopped halfway
                self._abandon(next(iter(self._verifiers)), "too many blobs being verified")
            self._verifiers[digest] = _Verifier(digest, self._nursery, self._budget)

    def failed(self, key: BlockKey) -> None:
        """A block's fetch failed: the blob can no longer be hashed in order."""
        if self.unhashed(*key):
            self._abandon(key[0], "a block failed to come")

    def evicted(self, key: BlockKey) -> None:
        if self.unhashed(*key):
            self._abandon(key[0], f"block {key[1]} was evicted before it was hashed")

    def read_around(self, digest: Digest, touched: range) -> None:
        """Bytes of these blocks go to the page cache without passing through the cache:
        the blob can no longer count on seeing all of its blocks."""
        verifier = self._verifiers.get(digest)
        if verifier is not None and any(
            index >= verifier.next and not self._blocks.covered(digest, index) for index in touched
        ):
            self._abandon(digest, "part of it was read around the cache")

    def landed(self, digest: Digest, landed: int) -> None:
        """Feed the verifier the blocks that follow on in the cache; conclude once the last
        is fed (the run that brings the last block concludes before landing it, in
        ``deliver``; this is for a last block that came some other way)."""
        verifier = self._verifiers.get(digest)
        if verifier is None:
            return
        while verifier.next <= self._last(digest):
            key = (digest, verifier.next)
            data = self._blocks.held(key)
            if data is None:
                if landed > verifier.next and not self._blocks.in_flight(key):
                    # A later block came while this one is not coming: the reader got it
                    # some other way (the page cache, a direct read). Give up.
                    self._abandon(digest, f"block {verifier.next} went around the cache")
                return
            verifier.hasher.feed_nowait(data)
            verifier.next += 1
            verifier.wake()
        del self._verifiers[digest]
        self._nursery.start_soon(self._conclude_later, digest, verifier)

    def deliver(self, key: BlockKey, flight: Flight, data: Chunk) -> None:
        """Land a run's block, but the blob's last one while the blob is being verified:
        that one waits for the verdict in a task of its own."""
        digest, index = key
        verifier = self._verifiers.get(digest)
        if verifier is None or index != self._last(digest):
            self._blocks.land(key, flight, data)
        else:
            self._nursery.start_soon(self._land_last, key, flight, data, verifier)

    async def _conclude_later(self, digest: Digest, verifier: _Verifier) -> None:
        try:
            await self._conclude(digest, verifier)
        except Exception:  # a bug here must not end the mount
            log.exception("verifying %s failed", digest)

    def _abandon(self, digest: Digest, why: str) -> None:
        verifier = self._verifiers.pop(digest, None)
        if verifier is not None:
            log.debug("%s: not verified: %s", digest, why)
            verifier.wake()

    async def _conclude(self, digest: Digest, verifier: _Verifier) -> bool:
        """Whether the blob hashed to its name (True if the hash was cut short by the
        mount ending). A mismatch marks it corrupt and drops its blocks."""
        got = await verifier.hasher.digest()
        if got is None or got == digest:
            return True
        log.error("%s: the server sent other content (%s): reads of it fail", digest, got)
        self._corrupt[digest] = True
        self._blocks.drop(digest)
        return False

    async def _land_last(
        self, key: BlockKey, flight: Flight, data: Chunk, verifier: _Verifier
    ) -> None:
        try:
            await self._verify_last(key, flight, data, verifier)
        except Exception as error:  # a bug here must not end the mount: the read fails
            log.exception("verifying %s failed", key[0])
            self._blocks.fail(key, flight, error)
        finally:
            if not flight.done.is_set():  # cancelled: the mount is ending
                self._blocks.fail(key, flight, None)

    async def _verify_last(
        self, key: BlockKey, flight: Flight, data: Chunk, verifier: _Verifier
    ) -> None:
        digest, index = key
        while self._verifiers.get(digest) is verifier and verifier.next < index:
            if not all(self._blocks.covered(digest, i) for i in range(verifier.next, index)):
                self._abandon(digest, "a block before the last is not coming")
                break
            await verifier.moved.wait()
        if self._verifiers.get(digest) is verifier and verifier.next == index:
            del self._verifiers[digest]
            verifier.hasher.feed_nowait(data)
            if not await self._conclude(digest, verifier):
                self._blocks.fail(key, flight, DataLoss(f"{digest}: the content does not match"))
                return
        self._blocks.land(key, flight, data)
