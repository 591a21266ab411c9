"""A tree's Directories stored where its remote keeps Directories: the one place that
knows both encodings (``encode.py``'s REAPI one, ``tvixencode.py``'s tvix one), so that
``uploads/`` (``user.casfs.digest`` of a directory) stays the same for both protocols.

``DirectoryStore`` takes one tree's Directories leaves first (``add``) and stores them:
on a REAPI CAS each as a blob when it is added; on a tvix castore all of them, each once
(equal Directories are one), by one DirectoryService Put at ``finish``, because upstream
tvix takes a Directory only with every Directory below it sent before it in the same
stream. Memory: a tvix store holds the Directories of the one tree it puts, until
``finish``.
"""

from __future__ import annotations

from collections.abc import Sequence

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs.cas.errors import DataLoss
from casfs.cas.remote import BlobRemote
from casfs.cas.tvixremote import TvixRemote
from casfs.digest import Digest
from casfs.trees import encode, tvixencode


class DirectoryStore:
    """The Directories of one tree, stored in the remote's encoding (see the module notes).

    ``subtrees_again``: whether a Directory stored before must be added again below a
    new parent (tvix: a Put refers only to what it carries), or its digest is enough
    (REAPI: a stored blob is referred to by digest).
    """

    def __init__(self, remote: BlobRemote) -> None:
        self.remote = remote
        self._tvix = remote if isinstance(remote, TvixRemote) else None
        self._closure: dict[bytes, castore_pb2.Directory] = {}

    @property
    def subtrees_again(self) -> bool:
        return self._tvix is not None

    async def add(self, entries: Sequence[tuple[str, encode.Entry]]) -> Digest:
        """The digest of the Directory of ``entries``, whose files are stored and whose
        directories were added before (or, on REAPI, stored): on a REAPI CAS stored now as
        a blob (the digest names it); on a tvix castore kept for ``finish`` (the digest is
        tvix's pair: its hash, and the entries below it as the size). Errors are the
        calls' ``CasError``s; cancellation cancels the call."""
        if self._tvix is None:
            return await self.remote.upload_bytes(encode.directory_bytes(entries))
        message = tvixencode.directory_message(entries)
        self._closure.setdefault(tvix_directory.digest_of(message), message)
        return tvixencode.digest_of(message)

    async def finish(self) -> None:
        """Store what ``add`` kept (tvix: one Put, leaves first, the last added as the
        root; nothing to do on REAPI), then forget it. A server that answers another
        root digest than the local one raises ``DataLoss``, as a blob's Put does; other
        errors as ``TvixRemote.put_directories`` (no DirectoryService: ``Unimplemented``).
        Cancellation cancels the call, and nothing is kept for a next ``finish``."""
        if self._tvix is None or not self._closure:
            return
        root = next(reversed(self._closure))
        closure, self._closure = list(self._closure.values()), {}
        answered = await self._tvix.put_directories(closure)
        if answered != root:
            raise DataLoss(f"tvix Directory Put {root.hex()}: the server answered {answered.hex()}")
