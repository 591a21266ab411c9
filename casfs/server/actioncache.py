"""ActionCache: Get/UpdateActionResult, so Bazel can use the server as --remote_cache."""

from __future__ import annotations

import grpc

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.digest import Digest
from casfs.server.cas import to_digest
from casfs.server.grpc_errors import RequestError, grpc_errors
from casfs.server.instances import Instances


def _output_digests(result: re_pb2.ActionResult) -> list[re_pb2.Digest]:
    """The blobs a result refers to (only the digest fields that are set)."""
    digests = [f.digest for f in result.output_files if f.HasField("digest")]
    for directory in result.output_directories:
        for field in ("tree_digest", "root_directory_digest"):
            if directory.HasField(field):
                digests.append(getattr(directory, field))
    for field in ("stdout_digest", "stderr_digest"):
        if result.HasField(field):
            digests.append(getattr(result, field))
    return digests


class ActionCacheServicer(re_grpc.ActionCacheServicer):
    """Action results per instance; a result whose outputs left the CAS is NOT_FOUND."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        """The stored result, unless any blob it refers to is missing (then NOT_FOUND)."""
        with grpc_errors(context, "GetActionResult"):
            instance = self.instances.get(request.instance_name)
            action = to_digest(request.action_digest, request.digest_function)
            result = re_pb2.ActionResult.FromString(instance.actions.get(action))
            outputs = [Digest.from_proto(d, action.function) for d in _output_digests(result)]
            if instance.blobs.missing(outputs):
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"outputs of the result for {action} were evicted"
                )
            return result

    def UpdateActionResult(
        self, request: re_pb2.UpdateActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        """Store the result for the action digest and echo it back."""
        with grpc_errors(context, "UpdateActionResult"):
            instance = self.instances.get(request.instance_name)
            action = to_digest(request.action_digest, request.digest_function)
            instance.actions.put(action, request.action_result.SerializeToString())
            return request.action_result
