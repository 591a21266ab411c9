"""Capabilities: what the embedded CAS supports, for clients to adapt to."""

from __future__ import annotations

import grpc

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs._proto import semver_pb2
from casfs.resource import Compressor
from casfs.server.cas import DIGEST_FUNCTIONS, MAX_BATCH_BYTES
from casfs.server.grpc_errors import grpc_errors
from casfs.server.instances import Instances

COMPRESSORS = (Compressor.ZSTD, Compressor.DEFLATE)


class CapabilitiesServicer(re_grpc.CapabilitiesServicer):
    """A cache-only server: no execution capabilities."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        """The same capabilities for every served instance; unknown instances are refused."""
        with grpc_errors(context, "GetCapabilities"):
            self.instances.get(request.instance_name)
            return re_pb2.ServerCapabilities(
                cache_capabilities=re_pb2.CacheCapabilities(
                    digest_functions=[f.name for f in DIGEST_FUNCTIONS],
                    action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
                        update_enabled=True
                    ),
                    max_batch_total_size_bytes=MAX_BATCH_BYTES,
                    symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.ALLOWED,
                    supported_compressors=[c.name for c in COMPRESSORS],
                    supported_batch_update_compressors=[c.name for c in COMPRESSORS],
                ),
                low_api_version=semver_pb2.SemVer(major=2, minor=0),
                high_api_version=semver_pb2.SemVer(major=2, minor=3),
            )
