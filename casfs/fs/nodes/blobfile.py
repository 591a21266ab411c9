"""``BlobFile``: ``<instance>/blobs/[<fn>/]<hash>/<size>``, a blob as a read-only file.

Opened for reading, it reads through the block cache (``blobio.py``); opened for writing,
it is a direct write of the blob's name, verified on close like one made by ``create``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

import casfs.fs.nodes.blobio as blobio
from casfs.cas.client import Chunk
from casfs.digest import Digest
from casfs.fs.blocks.readahead import Readahead
from casfs.fs.nodes.base import BLOB_TIMEOUT, Attributes, Handle, Node, Opened
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.uploadfiles import open_upload


@dataclass(eq=False)
class BlobHandle(Handle):
    """A blob open for reading; its ``Readahead`` follows the descriptor's read pattern."""

    blob: BlobFile
    readahead: Readahead = field(default_factory=Readahead)

    async def read(self, state: MountState, offset: int, size: int) -> Chunk:
        blob = self.blob
        return await blobio.read_blob(
            state, blob.instance, blob.digest, offset, size, self.readahead
        )


@dataclass(frozen=True, slots=True)
class BlobFile(Node):
    """The blob, read-only. It exists if the server has it (``exists``, asked at lookup)."""

    instance: str
    digest: Digest

    def attributes(self, state: MountState) -> Attributes:
        size = self.digest.size
        return Attributes(mode=stat.S_IFREG | 0o444, size=size, timeout=BLOB_TIMEOUT)

    async def exists(self, state: MountState) -> bool:
        return await blobio.exists(state, self.instance, self.digest)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            # Writing an existing blob's name: verified on close like any direct write.
            state.writable()
            direct = state.uploads.new_file(self.instance, None, "", 0o444, self.digest)
            return await open_upload(state, direct, flags, created=True, blob_inode=inode)
        await blobio.store_small_blob(state, inode, self.instance, self.digest)
        return Opened(BlobHandle(self), keep_cache=True)

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        return blobio.blob_xattrs(self.instance, self.digest)
