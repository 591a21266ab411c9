"""An async CAS client for trio, over blocking grpcio: ``CasClient``.

Its calls are built in layers, one job each: ``calls`` (the channel, plumbing,
capabilities), ``batches`` (FindMissingBlobs, BatchUpdateBlobs), ``reads`` (ByteStream
Read, BatchReadBlobs), ``writes`` (ByteStream Write and the upload policy), and here the
existence checks that must not trust a remote answering by hash alone.

Concurrency notes (the invariants the rest of casfs relies on):

- Unary calls never block a thread: they are started with ``.future()`` and the trio task
  sleeps until grpc's done-callback wakes it through the trio token. Streaming calls iterate
  a blocking grpc iterator, so each ``next()`` runs in a worker thread taken from one
  ``CapacityLimiter`` per client: at most ``max_concurrent_streams`` threads block in grpc.
- Cancelling the trio task cancels the grpc call (``call.cancel()`` / ``future.cancel()``);
  an abandoned worker thread then wakes with CANCELLED and its result is dropped.
- Every call has a deadline: ``rpc_timeout`` for unary calls, plus the time to move the
  bytes at ``min_stream_rate`` for streams.
- Errors leave this module only as ``casfs.cas.errors.CasError`` subclasses (the first
  border); ``grpc.RpcError`` never escapes.
- The client holds no blob in memory beyond one request or one response; ``write`` streams
  from a file, ``stream`` yields chunks as they arrive.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from casfs.cas.batches import FIND_MISSING_CHUNK
from casfs.cas.calls import ChannelFactory, Chunk
from casfs.cas.capabilities import BATCH_LIMIT, Capabilities
from casfs.cas.errors import CasError
from casfs.cas.quirks import SizeCheck
from casfs.cas.reads import SMALL_READ, read_response_data
from casfs.cas.retry import with_retries
from casfs.cas.writes import ProgressCallback, WriteCalls
from casfs.digest import MAX_SIZE, Digest, DigestFunction

__all__ = [
    "BATCH_LIMIT",
    "FIND_MISSING_CHUNK",
    "PROBE_BLOB",
    "SMALL_READ",
    "Capabilities",
    "CasClient",
    "ChannelFactory",
    "Chunk",
    "ProgressCallback",
]
# tests/test_client_server.py knows it by this name.
_read_response_data = read_response_data

log = logging.getLogger("casfs.cas")
# A blob of the client's own, for learning how a remote that ignores sizes reads one.
PROBE_BLOB = b"casfs: a probe of how this server reads a blob under a wrong size\n"


class CasClient(WriteCalls):
    """One REAPI CAS endpoint and instance, used from trio.

    ``CasClient(config)`` opens its channel from ``config`` (``open_channel``);
    ``CasClient(config, channel=factory)`` takes it from ``factory(config)`` instead (an
    in-process channel in a test). Create it inside ``trio.run`` (the channel must not
    cross a fork) and close it with ``aclose()`` or ``async with``.
    """

    upload_function = DigestFunction.SHA256  # of blobs written to a mount's uploads/

    async def __aenter__(self) -> CasClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def ranged(self, digest: Digest) -> bool:
        """ByteStream reads any range for the cost of that range."""
        return True

    # -- existence --------------------------------------------------------------------------

    async def contains(self, digest: Digest) -> bool:
        """Whether the server has the blob at its size (the empty blob always exists)."""
        return digest.is_empty or not await self.find_missing_exact([digest])

    async def find_missing_exact(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the server does not have at their size: ``find_missing`` for a name
        someone typed, where a wrong size must be missing.

        Some remotes answer FindMissingBlobs by hash alone. The first request that finds a
        blob present also asks for the same hash with another size (a canary, no extra
        call): present too, the remote answers by hash, and a probe on a blob of the
        client's own (``_probe_deletion``) tells whether reading past a blob's end under a
        wrong size deletes it. Where it does not, each blob reported present is confirmed
        by reading its last byte and one past its end (``_size_confirmed``), and counts as
        missing if those say another size. Where it does, or the probe was impossible,
        nothing is confirmed (``RemoteQuirks.size_check`` says so and the log warns once).

        Transient errors propagate (nothing is learned from them); cancellation leaves the
        lesson unlearned, to be learned by the next call.
        """
        unique = [d for d in dict.fromkeys(digests) if not d.is_empty]
        canary = None
        if self.quirks.size_check is SizeCheck.UNKNOWN and unique:
            first = unique[0]
            other = first.size + 1 if first.size < MAX_SIZE else first.size - 1
            canary = Digest(first.hash, other, first.function)
        asked = [*unique, canary] if canary is not None and canary not in unique else unique
        missing = await self.find_missing(asked)
        if canary is not None and unique[0] not in missing:
            if canary in missing:
                self.quirks.learn_size_check(SizeCheck.BY_DIGEST)
            else:
                await self._probe_deletion()
        if canary is not None and canary not in unique:
            missing.discard(canary)
        if self.quirks.size_check is SizeCheck.BY_HASH:
            for digest in unique:
                if digest not in missing and not await self._size_confirmed(digest):
                    missing.add(digest)
        return missing

    async def _probe_deletion(self) -> None:
        """The remote answers FindMissingBlobs by hash: learn whether a read past a blob's
        end under a wrong size deletes the blob (buildbox-casd does), on a tiny blob of the
        client's own (``PROBE_BLOB``, stored if missing), never on someone else's. Once per
        remote; a remote that refuses the blob (a read-only token) is not probed. A
        transient error propagates and, like cancellation, leaves it to the next lookup."""
        async with self.quirks.probing:
            if self.quirks.size_check is not SizeCheck.UNKNOWN:
                return
            if not self.quirks.may_store_probe:
                self.quirks.learn_size_check(
                    SizeCheck.NOT_PROBED, "a read-only mount stores no probe blob"
                )
                return
            probe = Digest.of_bytes(PROBE_BLOB)
            try:
                if await self.find_missing([probe]):
                    await self.batch_update([(probe, PROBE_BLOB)])
                with contextlib.suppress(CasError):  # it was read: what it did is what counts
                    await self._read_once(Digest(probe.hash, probe.size + 1), probe.size, 1)
                deleted = bool(await self.find_missing([probe]))
            except CasError as error:
                if error.transient:
                    raise
                self.quirks.learn_size_check(SizeCheck.NOT_PROBED, f"probe refused: {error}")
                return
            self.quirks.learn_size_check(
                SizeCheck.BY_HASH_DELETING if deleted else SizeCheck.BY_HASH
            )

    async def _size_confirmed(self, digest: Digest) -> bool:
        """Whether a blob that a remote answering by hash reports present has ``digest``'s
        size: its last byte can be read and nothing past it. Only for a remote whose reads
        past the end delete nothing (``SizeCheck.BY_HASH``); transient errors propagate."""
        what = f"confirm the size of {digest}"
        try:
            last = await with_retries(
                lambda: self._read_once(digest, digest.size - 1, 1), self.config.retry, what
            )
        except CasError as error:
            if error.transient:
                raise
            return False  # no byte there: the blob is shorter
        try:
            beyond = await with_retries(
                lambda: self._read_once(digest, digest.size, 1), self.config.retry, what
            )
        except CasError as error:
            if error.transient:
                raise
            beyond = b""  # refused past the end (OUT_OF_RANGE, INVALID_ARGUMENT): it ends there
        if len(last) != 1 or beyond:
            log.info("%s: the server has a blob of another size under this hash", digest)
            return False
        return True
