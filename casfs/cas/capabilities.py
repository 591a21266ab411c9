"""What a CAS server says it supports (GetCapabilities), reduced to what casfs uses, and
the batch budget that follows from it."""

from __future__ import annotations

from dataclasses import dataclass

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.digest import DigestFunction
from casfs.resource import Compressor

# gRPC's usual message limit is 4 MiB; batches stay well under it whatever is advertised.
BATCH_LIMIT = 4 << 20
_BATCH_SLACK = 64 << 10


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server says it supports, reduced to what casfs uses."""

    digest_functions: frozenset[DigestFunction]
    compressors: frozenset[Compressor]
    max_batch_bytes: int  # 0: no limit advertised
    raw: re_pb2.ServerCapabilities

    @classmethod
    def from_proto(cls, caps: re_pb2.ServerCapabilities) -> Capabilities:
        cache = caps.cache_capabilities
        return cls(
            digest_functions=frozenset(
                DigestFunction(v) for v in cache.digest_functions if v in _KNOWN_FUNCTIONS
            )
            or frozenset({DigestFunction.SHA256}),
            compressors=frozenset(
                Compressor(v) for v in cache.supported_compressors if v in _KNOWN_COMPRESSORS
            ),
            max_batch_bytes=cache.max_batch_total_size_bytes,
            raw=caps,
        )

    def batch_budget(self) -> int:
        """Bytes of blob data one batch request may carry."""
        limit = BATCH_LIMIT if self.max_batch_bytes <= 0 else min(self.max_batch_bytes, BATCH_LIMIT)
        return max(0, limit - _BATCH_SLACK)


_KNOWN_FUNCTIONS = {f.value for f in DigestFunction}
_KNOWN_COMPRESSORS = {c.value for c in Compressor}
