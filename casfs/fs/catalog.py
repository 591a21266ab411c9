"""What the mount knows about which blobs exist: cached existence answers and the blobs
seen so far (what ``ls blobs/`` shows). No FUSE in here.

Positive answers are kept long (a CAS may evict, but a blob that vanishes under an open
file turns into EIO on read, which is the honest answer); negative ones briefly, so that
a blob uploaded by someone else shows up soon.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import cachetools

from casfs.digest import Digest, DigestFunction

FindMissing = Callable[[Iterable[Digest]], Awaitable[set[Digest]]]


class Catalog:
    """Existence answers and seen blobs, per instance name."""

    def __init__(
        self,
        *,
        positive_ttl: float = 3600.0,
        negative_ttl: float = 2.0,
        max_entries: int = 100_000,
    ) -> None:
        self._present: cachetools.TTLCache[tuple[str, Digest], bool] = cachetools.TTLCache(
            maxsize=max_entries, ttl=positive_ttl
        )
        self._absent: cachetools.TTLCache[tuple[str, Digest], bool] = cachetools.TTLCache(
            maxsize=max_entries, ttl=negative_ttl
        )
        self._seen: OrderedDict[tuple[str, DigestFunction, str], set[int]] = OrderedDict()
        self._verified: cachetools.LRUCache[tuple[str, DigestFunction, str], int] = (
            cachetools.LRUCache(maxsize=max_entries)
        )
        self._max_seen = max_entries

    async def exists(self, instance: str, digest: Digest, find_missing: FindMissing) -> bool:
        """Whether the blob exists, asking the server (FindMissingBlobs) at most once a TTL."""
        key = (instance, digest)
        verified = self._verified.get((instance, digest.function, digest.hash))
        if verified is not None and verified != digest.size:
            # One hash has one size. Some servers (buildbox-casd) answer FindMissingBlobs
            # by hash alone, and delete the blob when it is then read with a wrong size.
            return False
        if digest.is_empty or key in self._present:
            self.note(instance, digest)
            return True
        if key in self._absent:
            return False
        if await find_missing([digest]):
            self._absent[key] = True
            return False
        self._present[key] = True
        self.note(instance, digest)
        return True

    def found(self, instance: str, digest: Digest) -> None:
        """Record a blob known to exist (this mount just uploaded it)."""
        self._present[(instance, digest)] = True
        self._absent.pop((instance, digest), None)
        self.note(instance, digest)

    def verify(self, instance: str, digest: Digest) -> None:
        """Record that the blob's last byte was read: its size is certain."""
        self._verified[(instance, digest.function, digest.hash)] = digest.size

    def note(self, instance: str, digest: Digest) -> None:
        """Remember a blob as seen, for directory listings (bounded; oldest go first)."""
        key = (instance, digest.function, digest.hash)
        sizes = self._seen.get(key)
        if sizes is None:
            self._seen[key] = sizes = set()
            if len(self._seen) > self._max_seen:
                self._seen.popitem(last=False)
        sizes.add(digest.size)

    def hashes(self, instance: str, function: DigestFunction | None) -> list[str]:
        """Hashes seen in an instance: of one function, or (None) of every function that
        lives directly under ``blobs/``."""
        return [
            hash_
            for (inst, fn, hash_) in self._seen
            if inst == instance
            and (fn is function if function is not None else not fn.in_resource_name)
        ]

    def sizes(self, instance: str, function: DigestFunction, hash_: str) -> list[int]:
        """Sizes seen for one hash."""
        return sorted(self._seen.get((instance, function, hash_), ()))
