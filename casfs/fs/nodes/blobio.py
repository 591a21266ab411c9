"""The blob side's I/O: whether a blob exists, reading it through the block cache, handing
a small one to the kernel's page cache, and its extended attributes. Used by blob files
and by committed files of ``uploads/`` (which read from the CAS too).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

import trio

from casfs.cas.client import SMALL_READ, Chunk
from casfs.cas.errors import NotFound
from casfs.digest import Digest
from casfs.fs.blocks.readahead import Readahead
from casfs.fs.catalog import FindMissing
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.resource import BlobName

log = logging.getLogger("casfs.fs")

XATTR_DIGEST = b"user.casfs.digest"
XATTR_FUNCTION = b"user.casfs.digest_function"
XATTR_RESOURCE = b"user.casfs.resource_name"
BLOB_XATTRS = [XATTR_DIGEST, XATTR_FUNCTION, XATTR_RESOURCE]


def blob_xattrs(instance: str, digest: Digest) -> dict[bytes, bytes]:
    return {
        XATTR_DIGEST: f"{digest.hash}/{digest.size}".encode(),
        XATTR_FUNCTION: digest.function.name_lower.encode(),
        XATTR_RESOURCE: BlobName(instance, digest).read_name().encode(),
    }


def _small(state: MountState, digest: Digest) -> bool:
    return 0 < digest.size <= min(SMALL_READ, state.cache.block_size)


async def exists(state: MountState, instance: str, digest: Digest) -> bool:
    """Whether the server has the blob, asked once a TTL (``catalog.py``)."""
    probe = existence_probe(state, instance, digest)
    return await state.catalog.exists(instance, digest, probe)


def existence_probe(state: MountState, instance: str, digest: Digest) -> FindMissing:
    """How a lookup asks the server whether a blob exists: FindMissingBlobs, or for a
    small blob a fetch of the whole blob (one BatchReadBlobs, checked against its
    digest) into the block cache, so that the read which usually follows costs no
    call. Both are one call; a missing blob is NOT_FOUND either way.

    FindMissingBlobs is asked with ``find_missing_exact``, which confirms the size on a
    remote that answers by hash alone. Until the remote is known to answer by digest,
    a small blob is asked that way too before it is fetched: a fetch under a wrong
    size may delete the blob on such a remote (buildbox-casd)."""
    client = state.clients[instance]
    cache = state.cache
    if (
        not _small(state, digest)
        or not digest.function.hashable
        or cache.covered(digest, 0)  # (for another instance, maybe: ask this one)
    ):
        return client.find_missing_exact

    async def fetch(digests: Iterable[Digest]) -> set[Digest]:
        if not client.quirks.size_check.trusted:
            missing = await client.find_missing_exact(digests)
            if missing or not client.quirks.size_check.trusted:
                return missing
        try:
            await cache.block(client, digest, 0)
        except NotFound:
            return {digest}
        return set()

    return fetch


async def store_small_blob(state: MountState, inode: int, instance: str, digest: Digest) -> None:
    """Hand a small blob that is in the cache (its lookup fetched it whole, see
    ``existence_probe``) to the kernel's page cache (FUSE_NOTIFY_STORE), so that
    reading it costs no FUSE read: a round trip to this process fewer per small file.

    Called in ``open``, where the kernel knows the inode (it refuses a store for an
    inode it does not know), and before the reply with ``keep_cache``, which keeps the
    pages. A kernel that refuses (an ``OSError``) leaves the reads to ``read``. The
    store waits for the page's lock, which a READ of the same page holds until this
    process answers it, so it runs in a worker thread: the trio thread stays free to
    answer that READ. Cancelled, the open goes on and the store finishes alone.

    Done once per inode while the pages stay (``fs/pagestores.py``): an open of a file
    whose blob this mount already stored skips it.
    """
    if not _small(state, digest) or state.pages.holds(inode, digest):
        return
    data = state.cache.cached(digest, 0)
    if data is None:
        return
    try:
        await trio.to_thread.run_sync(
            state.kernel.notify_store, inode, 0, bytes(data), abandon_on_cancel=True
        )
    except OSError as error:
        log.debug("%s: not put in the page cache: %s", digest, error)
        return
    state.pages.stored(inode, digest)
    state.catalog.verify(instance, digest)  # as a read of its last byte would


async def read_blob(
    state: MountState, instance: str, digest: Digest, off: int, size: int, readahead: Readahead
) -> Chunk:
    """Bytes of a blob from the block cache; a blob that vanished from the server is EIO.
    A read that reaches the blob's end makes its size certain (``Catalog.verify``)."""
    client = state.clients[instance]
    try:
        data = await state.cache.read_file(client, digest, off, size, readahead)
    except NotFound as error:
        log.warning("read: %s vanished from the server: %s", digest, error)
        raise NodeError(errno.EIO) from None
    if data and off + len(data) == digest.size:
        state.catalog.verify(instance, digest)
    return data
