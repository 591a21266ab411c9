"""Open files of ``assets/``: an asset read as its blob (``blobfile.BlobHandle``, through
the block cache), and a file written there, which is an upload (``uploadfiles``) pushed
under its URI after each commit.

A write's close reports the push: it fails with the push's error (the blob is in the CAS,
the name is not shown), and the next close or fsync pushes again. The name is shown to
listings only once pushed; while written, a lookup finds the file being written. A write
of an asset is not resumed by a later mount (its spool file is not recorded for one): the
close that failed said so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from casfs.digest import Digest
from casfs.fs.nodes.assetpush import push_committed
from casfs.fs.nodes.base import Opened
from casfs.fs.nodes.blobfile import BlobFile, BlobHandle
from casfs.fs.nodes.state import MountState
from casfs.fs.nodes.uploadfiles import UploadHandle
from casfs.fs.uploadentries import FileEntry


def open_asset_read(instance: str, digest: Digest) -> Opened:
    """An asset's blob for reading. Not ``keep_cache``: the name may change its blob."""
    return Opened(BlobHandle(BlobFile(instance, digest)))


async def open_asset_write(
    state: MountState,
    instance: str,
    uri: str,
    mode: int,
    flags: int,
    qualifiers: Mapping[str, str] | None,
    entry: FileEntry | None = None,
) -> tuple[Opened, FileEntry]:
    """Open ``entry`` (the file being written to ``uri``) or, with none, start a new one
    with ``qualifiers`` (those of the asset it replaces, or none)."""
    created = entry is None
    if entry is None:
        name = uri.rsplit("/", 1)[-1]
        entry = state.uploads.new_file(instance, None, name, mode or 0o644, None)
        state.uploads.spool.forget(entry)  # no later mount resumes it (see above)
        entry.qualifiers = dict(qualifiers or {})
        entry.uri = uri
        state.entries[entry.id] = entry
        state.assets.pending[(instance, uri)] = entry.id
    access = flags & os.O_ACCMODE
    writable = created or access != os.O_RDONLY
    await state.uploads.open(
        entry, write=writable, truncate=not created and bool(flags & os.O_TRUNC)
    )
    handle = AssetUploadHandle(entry, writable, uri=uri)
    return Opened(handle, direct_io=access == os.O_WRONLY), entry


@dataclass(eq=False)
class AssetUploadHandle(UploadHandle):
    """A file of assets/ open for writing: committed as any upload, then pushed."""

    uri: str = ""

    async def commit(self, state: MountState, *, any_descriptor: bool) -> None:
        """Commit and push (``UploadHandle.commit``); a push that failed at an earlier
        close is tried again. Either failing fails the close; cancelled, the push may or
        may not have happened (the next close pushes again)."""
        entry = self.entry
        try:
            await super().commit(state, any_descriptor=any_descriptor)
        finally:
            state.uploads.spool.forget(entry)
        if self.can_write or any_descriptor:
            await push_committed(state, entry)  # again, if the last close's push failed

    async def release(self, state: MountState) -> None:
        """Clean up. Once the last handle is gone the name is what was pushed, if
        anything: a file whose upload or push failed is dropped with its spool file."""
        await super().release(state)
        entry = self.entry
        key = (entry.instance, self.uri)
        if not entry.opens and state.assets.pending.get(key) == entry.id:
            del state.assets.pending[key]
            # Unlinked, its node answers ENOENT and its spool goes; the pushed name is shown.
            state.uploads.remove(entry)
