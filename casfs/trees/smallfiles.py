"""A directory's small files, fetched in few calls: BatchReadBlobs requests filled up to
the server's ``max_batch_total_size_bytes``, so ``cat dir/*`` or ``grep -r`` does not pay
a round trip per file.

``small_files`` hands each ``(digest, bytes)`` to an async ``store`` callback: the mount
puts them in its block cache, ``casfs get -r`` writes them out. Each blob was checked
against its digest by the client (``DataLoss`` otherwise).

Concurrency notes: up to ``parallel`` batches are in flight at once, each in a task of the
call's own nursery, and a batch is held until ``store`` has taken all of it: memory holds
at most ``parallel`` batches (each at most the server's batch budget, under 4 MiB).
Cancelling the call cancels the calls in flight; a failed batch (or ``store`` raising)
cancels the others and the error propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import trio

from casfs.cas.client import CasClient
from casfs.digest import Digest
from casfs.trees.model import Directory

SMALL_FILE = 64 << 10
"""Files up to this size are fetched ahead, in batches."""
_PER_BLOB_OVERHEAD = 256


def small_digests(directory: Directory, limit: int = SMALL_FILE) -> list[Digest]:
    """The distinct non-empty file digests of ``directory`` of at most ``limit`` bytes, in
    name order."""
    return list(dict.fromkeys(f.digest for f in directory.files if 0 < f.digest.size <= limit))


def pack(digests: Iterable[Digest], budget: int) -> list[list[Digest]]:
    """Digests in runs of one digest function whose sizes (plus overhead) fit ``budget``."""
    runs: list[list[Digest]] = []
    current: list[Digest] = []
    used = 0
    for digest in sorted(digests, key=lambda d: d.function.value):
        cost = digest.size + _PER_BLOB_OVERHEAD
        if current and (used + cost > budget or digest.function != current[0].function):
            runs.append(current)
            current, used = [], 0
        current.append(digest)
        used += cost
    if current:
        runs.append(current)
    return runs


Store = Callable[[Digest, bytes], Awaitable[None]]


async def fetch_small(
    client: CasClient, digests: Iterable[Digest], store: Store, *, parallel: int = 2
) -> int:
    """Fetch ``digests`` (small blobs) in batches as large as the server allows and hand
    each with its verified bytes to ``store``; returns how many were fetched. Order is not
    kept. Raises the first batch's error (the other batches are cancelled)."""
    budget = (await client.capabilities()).batch_budget()
    runs = pack(digests, budget)
    limiter = trio.CapacityLimiter(max(1, parallel))
    fetched = 0

    async def one(run: list[Digest]) -> None:
        nonlocal fetched
        async with limiter:  # held until stored: at most ``parallel`` batches in memory
            blobs = await client.batch_read(run)
            for digest, data in blobs.items():
                await store(digest, data)
            fetched += len(blobs)

    try:
        async with trio.open_nursery() as nursery:
            for run in runs:
                nursery.start_soon(one, run)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return fetched


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in a nursery's group that is not a cancellation (the group itself
    when it holds only cancellations, so trio's cancel scopes still see them)."""
    for error in _leaves(group):
        if not isinstance(error, trio.Cancelled):
            return error
    return group


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def small_files(
    client: CasClient,
    directory: Directory,
    store: Store,
    *,
    limit: int = SMALL_FILE,
    skip: Iterable[Digest] = (),
    parallel: int = 2,
) -> int:
    """Fetch the small files of ``directory`` (at most ``limit`` bytes, not in ``skip``,
    e.g. what the caller's cache holds already), each once, into ``store``."""
    skipped = set(skip)
    wanted = [d for d in small_digests(directory, limit) if d not in skipped]
    return await fetch_small(client, wanted, store, parallel=parallel)
