"""``TvixRemote``: a tvix castore BlobService as a ``BlobRemote`` (``cas/remote.py``), so
a mount reads and writes it as it does a REAPI CAS.

- Existence: Stat, asking for the blob's chunks. tvix names blobs by blake3 hash alone, so
  the size in a name is checked against the chunks' sizes where the server lists them
  (another size is missing); a server that lists none cannot be asked, and a read that
  finds another length fails with ``DataLoss`` instead. A digest of another function is
  missing: tvix has only blake3.
- Reads: a blob Stat listed in several chunks is read by chunk, only the chunks a range
  touches, each checked whole against its digest before any of it is handed on (a chunk
  larger than ``MAX_BUFFERED_CHUNK`` is streamed like a blob). A blob in one piece is
  streamed from its start (``cas/tvixreads.py``): a read goes on with a stream a read
  before it left open, and the bytes that stream past it go to ``passing`` (the mount's
  block cache keeps them), in whole blocks of ``passing_block`` bytes.
- Writes: Put at ``store_file``, the digest the server answers checked against the file's.
  A tree's Directories by one DirectoryService Put of all of them, leaves first
  (``put_directories``; ``trees/storedirs.py`` gathers them from the ``uploads/`` tree):
  upstream tvix accepts only a Put whose stream holds every Directory its Directories
  refer to.

Errors are ``CasError`` subclasses; cancelling a call cancels its grpc call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import cachetools

from casfs._proto.tvix import castore_pb2
from casfs.cas.calls import Chunk
from casfs.cas.errors import ContentChanged, DataLoss, NotFound, Unimplemented
from casfs.cas.quirks import RemoteQuirks, SizeCheck
from casfs.cas.tvix import ChunkInfo, TvixClient
from casfs.cas.tvixreads import Cursors
from casfs.cas.writes import ProgressCallback
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestFunction
from casfs.rpcstats import RpcStats

log = logging.getLogger("casfs.cas")

MAX_BUFFERED_CHUNK = 8 << 20  # a chunk up to this size is read whole and checked first
LAYOUTS = 10_000  # blobs whose chunk lists are remembered

# A block that streamed past a read: (blob, block index, the block's bytes).
PassingBlock = Callable[[Digest, int, bytes], None]


class TvixRemote:
    """One tvix castore endpoint, as a mount's remote. Create it inside ``trio.run``."""

    upload_function = DigestFunction.BLAKE3
    resumed_writes = 0  # Put has no resume

    def __init__(self, config: RemoteConfig, *, rpc_stats: RpcStats | None = None) -> None:
        self.config = config
        # Sizes are checked by Stat's chunks where the server lists them, by the read's
        # length where it does not; a fetch under a wrong size deletes nothing.
        self.quirks = RemoteQuirks(config.endpoint, size_check=SizeCheck.BY_DIGEST)
        self.tvix = TvixClient(config, rpc_stats=rpc_stats)
        self.cursors = Cursors(self.tvix.stream)
        self._layouts: cachetools.LRUCache[Digest, tuple[ChunkInfo, ...]] = cachetools.LRUCache(
            maxsize=LAYOUTS
        )
        self._passing: PassingBlock | None = None
        self._passing_block = 0

    def keep_passing(self, block_size: int, keep: PassingBlock) -> None:
        """Hand whole blocks (aligned to ``block_size``) that stream past reads to ``keep``."""
        self._passing_block = block_size
        self._passing = keep

    async def aclose(self) -> None:
        await self.cursors.aclose()
        await self.tvix.aclose()

    # -- existence --------------------------------------------------------------------------

    async def check(self) -> None:
        """One Stat of a blob nobody has: raises the ``CasError`` of a server that cannot
        answer it (down, refusing, no BlobService), passes on NOT_FOUND."""
        try:
            await self.tvix.stat(Digest("00" * 32, 1, DigestFunction.BLAKE3))
        except NotFound:
            return

    async def _layout(self, digest: Digest) -> tuple[ChunkInfo, ...]:
        """The blob's chunks as Stat lists them (none: one piece), asked once. A blob whose
        chunks add up to another size than the digest's is ``NotFound``: the server has
        no blob of that size."""
        layout = self._layouts.get(digest)
        if layout is None:
            try:
                layout = tuple(await self.tvix.stat(digest, chunks=True))
            except DataLoss as error:  # the chunks add up to another size
                raise NotFound(f"no blob of this size: {error}") from None
            self._layouts[digest] = layout
        return layout

    async def find_missing(self, digests: Iterable[Digest]) -> set[Digest]:
        """The blobs the server does not have, one Stat each; a blob whose listed chunks
        add up to another size is missing too."""
        missing = set()
        for digest in dict.fromkeys(digests):
            if digest.function is not DigestFunction.BLAKE3:
                missing.add(digest)
            elif not digest.is_empty:
                try:
                    await self._layout(digest)
                except NotFound:
                    missing.add(digest)
        return missing

    find_missing_exact = find_missing

    # -- reads ------------------------------------------------------------------------------

    def ranged(self, digest: Digest) -> bool:
        """Whether Stat listed the blob in several chunks (asked at its lookup); a blob
        not asked about yet counts as one piece."""
        return len(self._layouts.get(digest, ())) > 1

    async def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        pieces = [bytes(piece) async for piece in self.stream_range(digest, offset, length)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def stream_range(self, digest: Digest, offset: int, length: int) -> AsyncIterator[Chunk]:
        """Bytes ``[offset, offset + length)`` of the blob (clamped to its end), by chunk
        where Stat lists several, else from a stream of the whole blob."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        end = min(digest.size, offset + length)
        if offset >= end:
            return
        if digest.function is not DigestFunction.BLAKE3:
            raise NotFound(f"tvix has no {digest.function.name_lower} blobs: {digest}")
        layout = await self._layout(digest)
        if len(layout) > 1:
            async for piece in self._by_chunk(layout, offset, end):
                yield piece
            return
        async for piece in self.cursors.read(digest, offset, end, self._collector(digest)):
            yield piece

    async def _by_chunk(
        self, layout: Sequence[ChunkInfo], offset: int, end: int
    ) -> AsyncIterator[Chunk]:
        start = 0
        for chunk in layout:
            size = chunk.digest.size
            low, high = max(offset, start) - start, min(end, start + size) - start
            start += size
            if low >= high:
                continue
            if size <= MAX_BUFFERED_CHUNK:
                data = b"".join([bytes(p) async for p in self.tvix.stream(chunk.digest)])
                yield data if (low, high) == (0, size) else memoryview(data)[low:high]
            else:
                async for piece in self.cursors.read(chunk.digest, low, high):
                    yield piece
            if start >= end:
                return

    def _collector(self, digest: Digest) -> Callable[[int, Chunk], None] | None:
        """Where the bytes that stream past a read of ``digest`` go: assembled into whole
        blocks for ``keep_passing``'s callback (a partial block at either end is dropped)."""
        keep, block = self._passing, self._passing_block
        if keep is None or block <= 0:
            return None
        buffer = bytearray()
        base = -1  # the blob offset where ``buffer`` begins (a block boundary)

        def collect(position: int, data: Chunk) -> None:
            nonlocal base
            if base < 0 or base + len(buffer) != position:  # start at a block boundary
                buffer.clear()
                skip = -position % block
                if skip >= len(data):
                    return
                data, position, base = data[skip:], position + skip, position + skip
            buffer.extend(data)
            while len(buffer) >= block:
                keep(digest, base // block, bytes(buffer[:block]))
                del buffer[:block]
                base += block

        return collect

    # -- writes -----------------------------------------------------------------------------

    async def store_file(
        self,
        digest: Digest,
        path: os.PathLike[str] | str,
        progress: ProgressCallback | None = None,
        *,
        cold: bool = False,
    ) -> None:
        """Put the file; ``ContentChanged`` if what was sent is not ``digest`` (the file
        changed since it was hashed), the call's ``CasError`` if the Put failed (the
        server answering another digest than the bytes sent is ``DataLoss``)."""
        sent = await self.tvix.put(path)
        if sent != digest:
            raise ContentChanged(f"{os.fspath(path)} is {sent} now, not {digest}")

    async def put_directories(self, directories: Sequence[castore_pb2.Directory]) -> bytes:
        """Put a tree's Directories by one DirectoryService Put, leaves first, the last the
        root (upstream tvix accepts only a Put whose stream holds every Directory its
        Directories refer to); returns the root's raw digest, the server's answer checked
        against it. Errors as ``TvixClient.put_directories``; cancellation cancels the
        call."""
        return await self.tvix.put_directories(directories)

    async def upload_bytes(
        self, data: bytes, function: DigestFunction = DigestFunction.SHA256
    ) -> Digest:
        """Not for tvix: what the mount stores this way are REAPI Directories."""
        raise Unimplemented("a tvix castore remote stores no REAPI Directories")
