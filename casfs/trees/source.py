"""Directories by digest, fetched from a CAS, checked, and kept in a bounded cache.

:class:`TreeSource` is what the mount's trees/ and actions/ nodes (and ``casfs get -r``)
ask for a Directory. Every Directory comes through ``model.parse_directory``: verified
against its digest and checked before any name in it is used. A whole subtree can be
fetched ahead of a walk (``prefetch``): by GetTree (one stream; each Directory's bytes
hashed to learn its digest, only those the root reaches kept) or by BatchReadBlobs of the
missing Directories, one level of the tree at a time. docs/performance.md has the figures
that chose the default.

Concurrency notes: all state lives in the trio thread. A Directory is fetched once at a
time (single flight, ``fetchcache.py``): other tasks asking for it wait for the first; if
that fetch fails or is cancelled, the next waiter fetches it again itself. Cancelling a
caller cancels only its own gRPC call. Memory: the cache holds at most ``cache_bytes``
(by ``Directory.cost``), least recently used first out; a prefetch takes at most half of
that and stops there.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterable

from casfs.cas.client import CasClient
from casfs.cas.errors import Unimplemented
from casfs.cas.treecalls import TreeCalls
from casfs.digest import Digest
from casfs.trees.fetchcache import FetchCache
from casfs.trees.model import DEFAULT_LIMITS, Directory, TooDeep, TreeLimits, parse_directory

log = logging.getLogger("casfs.trees")

DEFAULT_CACHE_BYTES = 64 << 20


def _cost(directory: Directory) -> int:
    return directory.cost


class Prefetch(enum.Enum):
    """How a subtree is fetched ahead of a walk."""

    GET_TREE = "gettree"
    BATCH = "batch"


DEFAULT_PREFETCH = Prefetch.BATCH


class TreeSource:
    """Checked Directories of one CAS instance, by digest, with a bounded LRU cache."""

    def __init__(
        self,
        client: CasClient,
        *,
        limits: TreeLimits = DEFAULT_LIMITS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        prefetch: Prefetch = DEFAULT_PREFETCH,
    ) -> None:
        self.client = client
        self.calls = TreeCalls(client)
        self.limits = limits
        self.cache_bytes = cache_bytes
        self.prefetch_method = prefetch
        self._cache: FetchCache[Digest, Directory] = FetchCache(cache_bytes, _cost)

    # -- the cache ----------------------------------------------------------------------------

    def cached(self, digest: Digest) -> Directory | None:
        """The Directory if it is in the cache (and now the most recently used), else None."""
        return self._cache.get(digest)

    def keep(self, directory: Directory) -> None:
        """Put a checked Directory in the cache (keyed by its own digest)."""
        self._cache.keep(directory.digest, directory)

    @property
    def held_bytes(self) -> int:
        return self._cache.held

    def __len__(self) -> int:
        return len(self._cache)

    # -- one Directory ------------------------------------------------------------------------

    async def directory(self, digest: Digest) -> Directory:
        """The checked Directory ``digest`` names.

        Raises ``NotFound`` (ENOENT) if the CAS does not have it, ``DataLoss`` (EIO) if the
        bytes fetched do not match, ``BadDirectory`` (EIO) if it breaks a rule, other
        ``CasError``s as the client raises them. Cancellation cancels this caller's call.
        """
        return await self._cache.once(digest, lambda: self._fetch(digest))

    async def _fetch(self, digest: Digest) -> Directory:
        if digest.size > self.limits.max_directory_bytes:
            parse_directory(b"", digest, self.limits)  # raises BadDirectory
        data = await self.client.read_blob(digest)
        directory = parse_directory(data, digest, self.limits)
        self.keep(directory)
        return directory

    # -- a whole subtree ----------------------------------------------------------------------

    async def prefetch(self, root: Digest, method: Prefetch | None = None) -> int:
        """Fetch the subtree below ``root`` into the cache; returns how many Directories
        were fetched. Stops at ``limits.max_depth`` (``TooDeep``) and when the fetched
        Directories would take more than half the cache. A Directory the server does not
        send in a GetTree (or all of them, from a server without GetTree) is read by
        BatchReadBlobs. Errors as ``directory``; ``NotFound`` if any Directory of the
        subtree is missing. Cancellation cancels the call in flight and keeps what was
        already checked in the cache."""
        method = method or self.prefetch_method
        if method is Prefetch.GET_TREE:
            return await self._prefetch_get_tree(root)
        return await self._prefetch_batch(root)

    async def _walk(self, root: Digest, have: dict[Digest, bytes]) -> int:
        """Take the subtree from ``have`` (unverified bytes by the digest they hash to)
        and the CAS, a level at a time; returns Directories fetched or taken."""
        budget = self.cache_bytes // 2
        taken = 0
        level = [root]
        seen = {root}
        depth = 0
        while level:
            missing = [d for d in level if d not in have and self.cached(d) is None]
            if missing:
                have.update(await self.client.batch_read(missing))
            below: list[Digest] = []
            for digest in level:
                directory = self.cached(digest)
                if directory is None:
                    data = have.pop(digest, None)
                    if data is None:  # evicted since this level was read: read it again
                        directory = await self.directory(digest)
                    else:
                        directory = parse_directory(data, digest, self.limits)
                        self.keep(directory)
                    taken += 1
                    budget -= directory.cost
                for node in directory.directories:
                    if node.digest not in seen:
                        seen.add(node.digest)
                        below.append(node.digest)
            if budget <= 0:
                log.info("prefetch of %s stopped at %d directories: the cache is full", root, taken)
                break
            depth += 1
            if below and depth > self.limits.max_depth:
                raise TooDeep(f"tree {root}: deeper than {self.limits.max_depth} directories")
            level = below
        return taken

    async def _prefetch_batch(self, root: Digest) -> int:
        return await self._walk(root, {})

    async def _prefetch_get_tree(self, root: Digest) -> int:
        have: dict[Digest, bytes] = {}
        held = 0
        try:
            async with contextlib.aclosing(self.calls.get_tree(root)) as pages:
                async for data in pages:
                    held += len(data)
                    if held > self.cache_bytes // 2:
                        break  # the rest comes level by level, as far as the budget goes
                    have[Digest.of_bytes(data, root.function)] = data
        except Unimplemented:
            log.info("the server has no GetTree: %s comes level by level", root)
        return await self._walk(root, have)

    async def directories(self, digests: Iterable[Digest]) -> list[Directory]:
        """Several Directories, the missing ones read in batches."""
        wanted = list(dict.fromkeys(digests))
        missing = [d for d in wanted if self.cached(d) is None]
        if missing:
            for digest, data in (await self.client.batch_read(missing)).items():
                self.keep(parse_directory(data, digest, self.limits))
        return [await self.directory(d) for d in wanted]
