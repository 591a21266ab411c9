"""Open files of ``uploads/`` (and direct writes of ``blobs/<hash>/<size>``): reads from
the spool or the CAS, writes into the spool, and the commit at every close and fsync
(``Uploads.finalize``; the file's lifecycle is the table of ``fs/uploadstate.py``).

Uploads finish in ``commit`` (the adapter's ``flush`` and ``fsync``), where an error still
reaches the program; ``release`` only cleans up, since its errors reach no one.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

import trio

import casfs.fs.nodes.blobio as blobio
from casfs.cas.client import Chunk
from casfs.fs.blocks.readahead import Readahead
from casfs.fs.nodes.assetpush import push_committed
from casfs.fs.nodes.base import Handle, Opened
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.fs.uploadentries import FileEntry

log = logging.getLogger("casfs.fs")


async def open_upload(
    state: MountState,
    entry: FileEntry,
    flags: int,
    *,
    created: bool = False,
    blob_inode: int | None = None,
) -> Opened:
    """Open a file of uploads/ (or a direct write of a blob's name, ``blob_inode`` being
    the blob file's inode when it was opened by that name).

    A write-only descriptor gets ``direct_io``: its writes come here straight from the
    program's buffer, not copied into the kernel's page cache first (a ``cp`` of 1 GiB
    no longer fills 1 GiB of new pages it never reads; its write phase is about a tenth
    shorter). It cannot read, so it loses no caching, and it cannot be mapped, so
    shared writable mappings, which ``direct_io`` would refuse, keep working through
    read-write descriptors, which stay cached. The kernel keeps the two coherent: a
    direct write drops the cached pages it covers.
    """
    access = flags & os.O_ACCMODE
    writable = created or access != os.O_RDONLY  # a new file is written, if only empty
    truncate = not created and bool(flags & os.O_TRUNC)
    await state.uploads.open(entry, write=writable, truncate=truncate)
    handle = UploadHandle(entry, writable, blob_inode=blob_inode)
    return Opened(handle, direct_io=access == os.O_WRONLY)


@dataclass(eq=False)
class UploadHandle(Handle):
    """A file of uploads/ open for reading, writing or both."""

    entry: FileEntry
    can_write: bool
    readahead: Readahead = field(default_factory=Readahead)
    blob_inode: int | None = None  # a direct write over an existing blob's file

    async def read(self, state: MountState, offset: int, size: int) -> Chunk:
        """A pending file from its spool file; a committed one from the CAS."""
        entry = self.entry
        if entry.spool is not None:
            return await state.uploads.read_spool(entry, offset, size)
        if entry.digest is None:  # a direct write refused for its content: nothing to read
            raise NodeError(errno.EIO)
        return await blobio.read_blob(
            state, entry.instance, entry.digest, offset, size, self.readahead
        )

    async def write(self, state: MountState, offset: int, data: bytes) -> int:
        if not self.can_write:
            raise NodeError(errno.EBADF)
        return await state.uploads.write(self.entry, offset, data)

    async def commit(self, state: MountState, *, any_descriptor: bool) -> None:
        """Commit the file of a writable descriptor (or, ``any_descriptor``, of any).

        Every close of a changed file commits it (a close cannot tell whether it is the
        last: duplicates, forked children and the kernel's late releases all look alike).
        A write through a descriptor still open makes it pending again, and its close
        commits it again. fsync retries a failed upload (its spool is still there)."""
        if not (self.can_write or any_descriptor):
            return
        entry = self.entry
        if entry.committed or entry.unlinked:
            return
        try:
            digest = await state.uploads.finalize(entry)
        except Exception:
            if entry.digest is not None:  # committed, and then its earlier loss reported
                state.catalog.found(entry.instance, entry.digest)
            if self.blob_inode is not None:
                await drop_cached_pages(state, self.blob_inode)
            raise
        state.catalog.found(entry.instance, digest)
        await push_committed(state, entry)  # a file with a URI: named after its commit

    async def release(self, state: MountState) -> None:
        """Clean up; a file whose upload failed stays spooled for fsync or the next mount."""
        entry = self.entry
        await state.uploads.release(entry, wrote=self.can_write)
        if self.blob_inode is not None and not entry.committed and not entry.opens:
            await drop_cached_pages(state, self.blob_inode)  # written through a mapping
        if self.can_write and not entry.opens and not entry.committed and not entry.unlinked:
            log.info("%s stays spooled, not uploaded", entry.label())


async def drop_cached_pages(state: MountState, inode: int) -> None:
    """Make the kernel forget the pages it caches of a blob's file, after a write to
    the blob's name failed to commit. Writes through a read-write descriptor go through
    those pages (a write-only descriptor's go around them), and a reader that has the
    blob open must not be served refused bytes. The invalidation waits for page locks,
    which a READ holds until the trio thread answers it, so it runs in a worker thread;
    cancelled (the mount is ending), the invalidation finishes alone."""
    state.pages.forget(inode)
    try:
        await trio.to_thread.run_sync(state.kernel.invalidate_inode, inode, abandon_on_cancel=True)
    except OSError as error:  # the kernel no longer knows the inode: nothing cached
        log.debug("inode %d: cached pages not dropped: %s", inode, error)
