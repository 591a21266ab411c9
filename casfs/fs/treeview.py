"""What the mount's ``trees/`` and ``actions/`` nodes share: a ``DirectorySource`` per
instance (REAPI's ``TreeSource``, or a tvix castore's ``TvixTreeSource``, which has no
actions, Tree messages or batch reads), the tree and action digests the mount has seen
(what ``ls trees/`` and ``ls actions/`` show), the ActionCache entries fetched, and the
fetches ahead of readers (a subtree's Directories when a walk starts, a directory's small
files when its first file is opened). No pyfuse3 in here.

Failures: a Directory, Tree or ActionResult that does not match its digest, does not
parse or breaks a rule (``BadDirectory``, ``DataLoss``) is logged once per digest and
answered as ``NodeError(EIO)`` (an answer the adapter does not log again); a missing one
is ``NodeError(ENOENT)``; other ``CasError``s (a server down) leave as they are.

Concurrency notes: everything runs in the mount's trio thread. The fetches ahead run as
tasks of the nursery given (the mount's), each catching its own errors: a failed
prefetch only means the readers fetch for themselves. A directory's small files are
registered as block flights before their batch is sent, so a reader that comes while
the batch is on its way waits for it instead of fetching again; a batch that fails is
retried blob by blob, so each reader gets its own blob's outcome (a missing one: EIO at
read). Cancelling the mount's nursery fails the flights still pending (their readers
get an error, the next read fetches again). Memory: Directories within the sources'
``cache_bytes``, entries within half that, small files within a quarter of the block
cache per directory, and ``BATCHES_IN_FLIGHT`` batches on their way for all directories
(taken in the order the directories were listed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import cachetools
import trio

from casfs.cas.client import CasClient
from casfs.cas.errors import CasError, DataLoss, NotFound
from casfs.digest import Digest
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.blocks.flight import Flight
from casfs.fs.catalog import Catalog
from casfs.fs.nodes.errors import NodeError
from casfs.trees.actionsource import ActionView, fetch_action, fetch_tree
from casfs.trees.directories import DirectorySource
from casfs.trees.model import DEFAULT_LIMITS, BadDirectory, Directory, TreeLimits
from casfs.trees.model import Node as Entry
from casfs.trees.smallfiles import SMALL_FILE, pack, small_digests
from casfs.trees.source import DEFAULT_CACHE_BYTES, TreeSource

if TYPE_CHECKING:
    from casfs.fs.nodes.treenodes import Origin

log = logging.getLogger("casfs.fs")

BATCHES_IN_FLIGHT = 4
"""Small-file batches on their way at once, all directories together."""
_REMEMBERED = 10_000  # digests remembered as prefetched, or as bad (logged)
_NAMED = 64  # Directories whose entries are kept by name


class TreeView:
    """The trees and actions of a mount: sources, what was seen, fetches ahead."""

    def __init__(
        self,
        clients: Mapping[str, CasClient],
        cache: BlockCache,
        nursery: trio.Nursery,
        *,
        limits: TreeLimits = DEFAULT_LIMITS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        sources: Mapping[str, DirectorySource] | None = None,
    ) -> None:
        self.clients = clients
        self.cache = cache
        self.limits = limits
        # REAPI's sources (trees, Tree messages, actions); ``sources`` adds others (a
        # tvix castore's Directories: trees only, files read as blobs are, one by one).
        self.reapi = {
            name: TreeSource(client, limits=limits, cache_bytes=cache_bytes)
            for name, client in clients.items()
        }
        self.sources: dict[str, DirectorySource] = {**self.reapi, **(sources or {})}
        self.trees_seen = Catalog()
        self.actions_seen = Catalog()
        self._nursery = nursery
        self._batches = trio.CapacityLimiter(BATCHES_IN_FLIGHT)
        self._actions: cachetools.LRUCache[tuple[str, Digest], ActionView] = cachetools.LRUCache(
            maxsize=max(1, cache_bytes // 2), getsizeof=_view_cost
        )
        self._walked: cachetools.LRUCache[tuple[str, Digest], bool] = cachetools.LRUCache(
            maxsize=_REMEMBERED
        )
        self._listed: cachetools.LRUCache[tuple[str, Digest], bool] = cachetools.LRUCache(
            maxsize=_REMEMBERED
        )
        self._bad: cachetools.LRUCache[Digest, bool] = cachetools.LRUCache(maxsize=_REMEMBERED)
        # Directories' entries by name, for lookups (a large directory looked up name by
        # name must not build its table each time).
        self._names: cachetools.LRUCache[Digest, dict[str, Entry]] = cachetools.LRUCache(
            maxsize=_NAMED
        )

    # -- failures ---------------------------------------------------------------------------

    def _refuse(self, digest: Digest, error: CasError) -> NodeError:
        """The answer for a fetch that failed: EIO for bad content (logged once per
        digest), ENOENT for a missing one; other errors are raised as they are."""
        if isinstance(error, NotFound):
            return NodeError(errno.ENOENT)
        if isinstance(error, BadDirectory | DataLoss):
            if digest not in self._bad:
                self._bad[digest] = True
                log.warning("%s", error)
            return NodeError(errno.EIO)
        raise error

    def refused(self, digest: Digest, error: CasError) -> NodeError:
        """As ``_refuse``, for a rule a node found broken (a path too deep)."""
        return self._refuse(digest, error)

    # -- Directories ------------------------------------------------------------------------

    async def directory(self, origin: Origin, digest: Digest) -> Directory:
        """The checked Directory ``digest`` of a tree from ``origin``. ``NodeError``
        ENOENT if it is missing, EIO if it is bad (see the module notes)."""
        source = self.sources[origin.instance]
        found = source.cached(digest)
        if found is not None:
            return found
        try:
            if origin.tree is None:
                return await source.directory(digest)
            root, children = await fetch_tree(self.reapi[origin.instance], origin.tree)
            found = root if root.digest == digest else children.get(digest)
            if found is None:
                raise BadDirectory(f"Tree {origin.tree}: no Directory {digest}")
            return found
        except CasError as error:
            raise self._refuse(origin.tree or digest, error) from None

    def names(self, directory: Directory) -> dict[str, Entry]:
        """The Directory's entries by name (kept for the most recently used ones)."""
        found = self._names.get(directory.digest)
        if found is None:
            found = self._names[directory.digest] = directory.entries
        return found

    def cached(self, origin: Origin, digest: Digest) -> Directory | None:
        return self.sources[origin.instance].cached(digest)

    def walk_started(self, origin: Origin, root: Digest) -> None:
        """A tree's root was looked up: fetch its Directories ahead of the walk (once,
        in the background; Directories of a Tree message are all here already)."""
        key = (origin.instance, root)
        if origin.tree is not None or key in self._walked:
            return
        self._walked[key] = True
        self._nursery.start_soon(self._prefetch_tree, origin.instance, root)

    async def _prefetch_tree(self, instance: str, root: Digest) -> None:
        try:
            fetched = await self.sources[instance].prefetch(root)
        except Exception as error:  # the readers will meet it, and it is logged then
            log.debug("prefetch of tree %s stopped: %s", root, error)
            self._walked.pop((instance, root), None)
        else:
            log.debug("prefetched %d directories of %s", fetched, root)

    # -- ActionCache entries ----------------------------------------------------------------

    async def action(self, instance: str, digest: Digest) -> ActionView:
        """The ActionCache entry of ``digest`` with what it refers to (kept while the
        budget allows). ``NodeError`` ENOENT if there is none, EIO if it is bad."""
        key = (instance, digest)
        view = self._actions.get(key)
        if view is not None:
            return view
        try:
            view = await fetch_action(self.reapi[instance], digest)
            view.outputs()  # check the output paths before anything is shown
        except CasError as error:
            raise self._refuse(digest, error) from None
        with contextlib.suppress(ValueError):  # larger than the budget: fetched when asked
            self._actions[key] = view
        return view

    # -- small files ------------------------------------------------------------------------

    def small_files(self, origin: Origin, directory: Directory) -> None:
        """A file of the directory was opened: fetch its small files into the block cache
        in a few batches (once while remembered; in the background)."""
        key = (origin.instance, directory.digest)
        if key in self._listed or origin.instance not in self.clients:
            return  # (a remote with no batch reads reads each file as blobs/ does)
        self._listed[key] = True
        cache = self.cache
        limit = min(SMALL_FILE, cache.block_size)
        budget = cache.capacity // 4
        run: list[tuple[Digest, Flight]] = []
        for digest in small_digests(directory, limit):
            if cache.covered(digest, 0):
                continue
            budget -= digest.size
            if budget < 0:
                break
            run.append((digest, cache.new_flight((digest, 0))))
        if run:
            self._nursery.start_soon(self._fetch_small, origin.instance, run)

    async def _fetch_small(self, instance: str, run: list[tuple[Digest, Flight]]) -> None:
        client = self.clients[instance]
        pending = dict(run)
        try:
            budget = (await client.capabilities()).batch_budget()
            async with trio.open_nursery() as nursery:
                for batch in pack(pending, budget):
                    nursery.start_soon(self._batch, client, batch, pending)
        except Exception as error:  # a bug here must not end the mount: readers retry
            log.exception("small files of %s failed: %s", instance, error)
        finally:
            for digest, flight in pending.items():  # cancelled, or failed above
                self.cache.fail((digest, 0), flight, None)

    async def _batch(
        self,
        client: CasClient,
        batch: list[Digest],
        pending: dict[Digest, Flight],
    ) -> None:
        async with self._batches:
            try:
                blobs = await client.batch_read(batch)
            except CasError:  # one bad or missing blob fails the batch: each on its own
                for digest in batch:
                    try:
                        self._land(digest, (await client.batch_read([digest]))[digest], pending)
                    except CasError as error:
                        flight = pending.pop(digest, None)
                        if flight is not None:
                            self.cache.fail((digest, 0), flight, error)
                return
            for digest, data in blobs.items():
                self._land(digest, data, pending)

    def _land(self, digest: Digest, data: bytes, pending: dict[Digest, Flight]) -> None:
        flight = pending.pop(digest, None)
        if flight is not None:
            self.cache.land((digest, 0), flight, data)


def _view_cost(view: ActionView) -> int:
    """What an entry holds in memory, roughly: its result and its trees' Directories."""
    cost = view.result.ByteSize() + 1000
    for root, children in view.trees.values():
        cost += root.cost + sum(d.cost for d in children.values())
    return cost
