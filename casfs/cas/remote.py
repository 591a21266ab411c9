"""``BlobRemote``: the few calls a mount makes of a CAS, whatever protocol it speaks.

The mount (``fs/``) reads and writes blobs through this Protocol only, so a second
protocol is a second implementation here in ``cas/``, never a branch in ``fs/``:
``CasClient`` speaks REAPI and ByteStream to one instance, ``TvixRemote``
(``cas/tvixremote.py``) speaks tvix castore's BlobService. Views that exist only in one
protocol (REAPI's trees, actions and assets) take the client of that protocol.

Every call raises only ``CasError`` subclasses (``cas/errors.py``); cancelling the calling
trio task cancels the call.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from casfs.cas.calls import Chunk
from casfs.cas.quirks import RemoteQuirks
from casfs.cas.writes import ProgressCallback
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestFunction


class BlobRemote(Protocol):
    """One remote (and instance) as the mount uses it."""

    config: RemoteConfig  # its endpoint names it in the status and the disk cache
    quirks: RemoteQuirks  # whether a blob found present is present at its size
    resumed_writes: int  # uploads resumed mid-way, for the status (0 where none can be)

    @property
    def upload_function(self) -> DigestFunction:
        """The digest function of blobs written to ``uploads/``."""
        ...

    async def find_missing(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the remote does not have (by its own rule for sizes)."""
        ...

    async def find_missing_exact(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the remote does not have at their size: for names someone typed."""
        ...

    def ranged(self, digest: Digest) -> bool:
        """Whether a read of part of the blob costs that part only (else the blob is
        streamed from its start: read it in whole blocks, in order)."""
        ...

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of a blob, clamped to its end; ``NotFound``
        for a missing blob, ``DataLoss`` for bytes that do not match it."""
        ...

    def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[Chunk]:
        """The same bytes as ``read_range``, yielded as they come."""
        ...

    async def store_file(
        self,
        digest: Digest,
        path: os.PathLike[str] | str,
        progress: ProgressCallback | None = None,
        *,
        cold: bool = False,
    ) -> None:
        """Upload the file at ``path`` whose digest is known; ``ContentChanged`` if the
        file no longer has it, the call's ``CasError`` otherwise."""
        ...

    async def upload_bytes(
        self, data: bytes, function: DigestFunction = DigestFunction.SHA256
    ) -> Digest:
        """Store a small blob held in memory and return its digest."""
        ...

    async def aclose(self) -> None:
        """Close the connection; calls still running fail."""
        ...
