"""``CasClient``'s existence and upload batch calls: FindMissingBlobs in requests of at
most 10,000 digests, BatchUpdateBlobs in batches under the message limit, each request
retried whole on transient errors (``cas/retry.py``); cancellation cancels the call in
flight. (BatchReadBlobs is a read: ``cas/reads.py``.)"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.calls import ClientCore
from casfs.cas.errors import from_status
from casfs.digest import Digest, DigestFunction

_PER_BLOB_OVERHEAD = 256
# Digests per FindMissingBlobs request (about 80 bytes each on the wire).
FIND_MISSING_CHUNK = 10_000


def by_function(digests: Iterable[Digest]) -> dict[DigestFunction, list[Digest]]:
    """Digests grouped by digest function (a request names one function)."""
    groups: dict[DigestFunction, list[Digest]] = {}
    for digest in digests:
        groups.setdefault(digest.function, []).append(digest)
    return groups


def batches(digests: Iterable[Digest], budget: int) -> Iterator[list[Digest]]:
    """Runs of digests of one function whose sizes (plus per-blob overhead) fit in
    ``budget``."""
    for group in by_function(digests).values():
        batch: list[Digest] = []
        used = 0
        for digest in group:
            cost = digest.size + _PER_BLOB_OVERHEAD
            if batch and used + cost > budget:
                yield batch
                batch, used = [], 0
            batch.append(digest)
            used += cost
        if batch:
            yield batch


class BatchCalls(ClientCore):
    """FindMissingBlobs and BatchUpdateBlobs."""

    async def find_missing(self, digests: Iterable[Digest]) -> set[Digest]:
        """The digests the server does not have, asked in requests of at most 10,000."""
        missing: set[Digest] = set()
        for function, group in by_function(digests).items():
            for start in range(0, len(group), FIND_MISSING_CHUNK):
                chunk = group[start : start + FIND_MISSING_CHUNK]
                request = re_pb2.FindMissingBlobsRequest(
                    instance_name=self.instance,
                    blob_digests=[d.to_proto() for d in chunk],
                    digest_function=function.name,
                )
                response = await self._retrying_unary(
                    self._cas.FindMissingBlobs, request, f"FindMissingBlobs ({len(chunk)})"
                )
                missing.update(
                    Digest.from_proto(d, function) for d in response.missing_blob_digests
                )
        return missing

    async def batch_update(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Upload small blobs by BatchUpdateBlobs, in batches under the message limit."""
        budget = (await self.capabilities()).batch_budget()
        data_of = {digest: data for digest, data in blobs if digest.size > 0}
        for digest, data in data_of.items():
            if len(data) != digest.size:
                raise ValueError(f"{digest}: got {len(data)} bytes")
        for batch in batches(data_of, budget):
            function = batch[0].function
            request = re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.instance,
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(digest=d.to_proto(), data=data_of[d])
                    for d in batch
                ],
                digest_function=function.name,
            )
            response = await self._retrying_unary(
                self._cas.BatchUpdateBlobs, request, f"BatchUpdateBlobs ({len(batch)})"
            )
            for item in response.responses:
                digest = Digest.from_proto(item.digest, function)
                error = from_status(item.status.code, item.status.message, f"upload {digest}")
                if error is not None:
                    raise error
