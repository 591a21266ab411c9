"""``TvixTreeSource``: tvix castore Directories by digest, from a DirectoryService, checked
and kept in a bounded cache: the ``DirectorySource`` of a mount of a tvix castore.

tvix names a Directory by its blake3 hash alone, so that is the cache's key; the size a
parent's DirectoryNode gives a Directory (entries below it) is checked against the
Directory itself when it is asked for under that size (``directory``): a parent that
miscounts its child makes the child bad. Every Directory comes through the client's
checks (its hash, its place in a recursive Get, its names: ``TvixClient.get_directories``)
and then ``tvixmodel.from_tvix`` (names again, order, limits) before any name is used.
A subtree is fetched ahead of a walk by one recursive Get (``prefetch``).

Failures: a missing Directory is ``NotFound``; one that does not match its hash, breaks a
rule, or that the server refuses as invalid (INVALID_ARGUMENT for a digest we sent well
formed: casfs serve says so of a stored blob that is no valid Directory), or that a Get
answers with nothing, is ``DataLoss`` or ``BadDirectory`` (EIO); other ``CasError``s as
the client raises them.

Concurrency notes: all state lives in the trio thread. A Directory is fetched once at a
time (single flight, ``fetchcache.py``): other tasks asking for it wait for the first and
look again, so a failed or cancelled fetch is retried by the next asker. Cancelling a
caller cancels its own call. Memory: the cache holds at most ``cache_bytes`` (by
``TvixDirectory.cost``), least recently used first out; a prefetch takes at most half of
that and then ends its stream.
"""

from __future__ import annotations

import contextlib
import logging

from casfs.cas.errors import InvalidArgument
from casfs.cas.tvix import TvixClient
from casfs.digest import Digest
from casfs.trees.fetchcache import FetchCache
from casfs.trees.model import DEFAULT_LIMITS, BadDirectory, Directory, TooDeep, TreeLimits
from casfs.trees.source import DEFAULT_CACHE_BYTES
from casfs.trees.tvixmodel import TvixDirectory, from_tvix

log = logging.getLogger("casfs.trees")


def _cost(item: TvixDirectory) -> int:
    return item.cost


class TvixTreeSource:
    """Checked tvix Directories of one tvix castore, by hash, with a bounded LRU cache."""

    def __init__(
        self,
        client: TvixClient,
        *,
        limits: TreeLimits = DEFAULT_LIMITS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.client = client
        self.limits = limits
        self.cache_bytes = cache_bytes
        self._cache: FetchCache[str, TvixDirectory] = FetchCache(cache_bytes, _cost)

    # -- the cache ----------------------------------------------------------------------------

    def _get(self, hash_: str) -> Directory | None:
        found = self._cache.get(hash_)
        return None if found is None else found.directory

    def cached(self, digest: Digest) -> Directory | None:
        """The Directory if it is cached under this hash and size, else None."""
        found = self._get(digest.hash)
        return found if found is not None and found.digest == digest else None

    def keep(self, item: TvixDirectory) -> None:
        """Put a checked Directory in the cache (keyed by its hash)."""
        self._cache.keep(item.hash, item)

    @property
    def held_bytes(self) -> int:
        return self._cache.held

    def __len__(self) -> int:
        return len(self._cache)

    # -- one Directory ------------------------------------------------------------------------

    async def by_hash(self, hash_: str) -> Directory:
        """The checked Directory the blake3 hash ``hash_`` (hex) names: a tree's root,
        which tvix names by hash alone. Errors as in the module notes."""
        item = await self._cache.once(hash_, lambda: self._fetch(hash_))
        return item.directory

    async def directory(self, digest: Digest) -> Directory:
        """The Directory a DirectoryNode names: its hash, and the entries below it as the
        parent counts them; a Directory with another count is ``BadDirectory``."""
        found = await self.by_hash(digest.hash)
        if found.digest != digest:
            raise BadDirectory(
                f"tvix Directory {digest.hash}: {found.digest.size} entries are below it, "
                f"but its parent gives it size {digest.size}"
            )
        return found

    async def _fetch(self, hash_: str) -> TvixDirectory:
        try:
            stream = self.client.get_directories(bytes.fromhex(hash_))
            async with contextlib.aclosing(stream) as directories:  # type: ignore[type-var]
                # The client raises DataLoss for a stream that ends with nothing.
                item = from_tvix(await anext(directories), self.limits)
        except InvalidArgument as error:
            raise BadDirectory(f"tvix Directory {hash_}: the server refuses it: {error}") from None
        self.keep(item)
        return item

    # -- a whole subtree ----------------------------------------------------------------------

    async def prefetch(self, root: Digest) -> int:
        """Fetch the subtree below ``root`` into the cache by one recursive Get; returns
        how many Directories came. Stops (ending the stream) when they would take more
        than half the cache, raises ``TooDeep`` below ``limits.max_depth``, errors as
        ``by_hash`` otherwise. What was checked before an error or cancellation stays."""
        budget = self.cache_bytes // 2
        depths = {root.hash: 0}
        taken = 0
        try:
            stream = self.client.get_directories(bytes.fromhex(root.hash), recursive=True)
            async with contextlib.aclosing(stream) as directories:  # type: ignore[type-var]
                async for message in directories:
                    item = from_tvix(message, self.limits)
                    below = depths.get(item.hash, 0) + 1
                    for node in item.directory.directories:
                        if node.digest.hash not in depths:
                            if below > self.limits.max_depth:
                                raise TooDeep(
                                    f"tvix tree {root.hash}: deeper than "
                                    f"{self.limits.max_depth} directories"
                                )
                            depths[node.digest.hash] = below
                    self.keep(item)
                    taken += 1
                    budget -= item.cost
                    if budget <= 0:
                        log.info(
                            "prefetch of %s stopped at %d directories: the cache is full",
                            root.hash,
                            taken,
                        )
                        break
        except InvalidArgument as error:
            raise BadDirectory(f"tvix tree {root.hash}: the server refuses it: {error}") from None
        return taken
