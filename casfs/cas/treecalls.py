"""The REAPI calls for trees and actions that ``CasClient`` does not make: GetTree (paged,
each Directory handed over as the bytes the server sent, so it can be verified against a
digest) and GetActionResult.

Same rules as ``client.py``, whose channel, deadlines, limiter and retry policy these
calls share: unary calls are grpc futures woken through the trio token, a stream's
``next()`` runs in a worker thread under the client's limiter, a cancelled trio task
cancels its call, and only ``CasError`` subclasses leave this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.cas.errors import CasError, DataLoss
from casfs.digest import Digest

GET_ACTION_RESULT = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"
UPDATE_ACTION_RESULT = "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult"
GET_TREE = "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree"
# Directories a page asks for; the server may send fewer.
DEFAULT_PAGE_SIZE = 1000


class TreeCalls:
    """GetTree and GetActionResult on a ``CasClient``'s channel and instance."""

    def __init__(self, client: CasClient) -> None:
        self.client = client
        channel = client._channel
        self._get_tree = channel.unary_stream(
            GET_TREE,
            request_serializer=re_pb2.GetTreeRequest.SerializeToString,
            response_deserializer=None,  # raw: each Directory's exact bytes are hashed
        )
        self._get_action_result = channel.unary_unary(
            GET_ACTION_RESULT,
            request_serializer=re_pb2.GetActionResultRequest.SerializeToString,
            response_deserializer=re_pb2.ActionResult.FromString,
        )
        self._update_action_result = channel.unary_unary(
            UPDATE_ACTION_RESULT,
            request_serializer=re_pb2.UpdateActionResultRequest.SerializeToString,
            response_deserializer=re_pb2.ActionResult.FromString,
        )

    async def get_action_result(self, action: Digest) -> re_pb2.ActionResult:
        """The ActionCache entry of ``action``; ``NotFound`` (ENOENT) when there is none.

        Retries transient failures with the client's policy; cancellation cancels the call.
        """
        request = re_pb2.GetActionResultRequest(
            instance_name=self.client.instance,
            action_digest=action.to_proto(),
            digest_function=action.function.name,
            inline_stdout=True,
            inline_stderr=True,
        )
        result: re_pb2.ActionResult = await self.client._retrying_unary(
            self._get_action_result, request, f"GetActionResult {action}"
        )
        return result

    async def update_action_result(self, action: Digest, result: re_pb2.ActionResult) -> None:
        """Store ``result`` as the entry of ``action`` (tests and tools write entries)."""
        request = re_pb2.UpdateActionResultRequest(
            instance_name=self.client.instance,
            action_digest=action.to_proto(),
            action_result=result,
            digest_function=action.function.name,
        )
        await self.client._retrying_unary(
            self._update_action_result, request, f"UpdateActionResult {action}"
        )

    async def get_tree(
        self, root: Digest, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncGenerator[bytes, None]:
        """The serialized Directories below ``root`` (itself included), as the server sends
        them: unverified, in the server's order; missing ones may be left out (REAPI allows
        it). The caller hashes each to learn which digest it is.

        A stream cut short with a page token is resumed from that token; a transient
        failure before any page arrived is retried with the client's policy, one after
        that resumes at the last page token received. ``NotFound`` if the root is missing.
        Cancellation cancels the stream.
        """
        token = ""
        delays = self.client.config.retry.delays()
        while True:
            try:
                stream = self._one_stream(root, page_size, token)
                async with contextlib.aclosing(stream) as items:
                    async for kind, value in items:
                        if kind == "token":
                            token = value.decode()
                            delays = self.client.config.retry.delays()
                        else:
                            yield value
                if not token:
                    return
            except CasError as error:
                delay = next(delays, None)
                if not error.transient or delay is None:
                    raise
                await trio.sleep(delay)

    async def _one_stream(
        self, root: Digest, page_size: int, token: str
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        """One GetTree call: ("dir", bytes) per Directory, then ("token", next) per page;
        ends with the last page's token (b"" when the tree is complete)."""
        request = re_pb2.GetTreeRequest(
            instance_name=self.client.instance,
            root_digest=root.to_proto(),
            page_size=page_size,
            page_token=token,
            digest_function=root.function.name,
        )
        what = f"GetTree {root}"
        call: Any = self._get_tree(
            request,
            timeout=self.client._stream_timeout(64 << 20),
            metadata=self.client._metadata,
        )
        responses = iter(call)
        last = b""
        try:
            while True:
                raw = await self.client._in_thread(lambda: next(responses, None), call, what)
                if raw is None:
                    break
                directories, last = split_get_tree_response(raw, what)
                for directory in directories:
                    yield "dir", directory
                yield "token", last
        finally:
            call.cancel()


def _varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise DataLoss(f"{what}: a response does not parse")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def split_get_tree_response(raw: bytes, what: str = "GetTree") -> tuple[list[bytes], bytes]:
    """A serialized GetTreeResponse cut into its Directories' exact bytes and its
    ``next_page_token`` (protobuf wire format: field 1 and 2, both length-delimited;
    other fields skipped). ``DataLoss`` if it does not parse."""
    directories: list[bytes] = []
    token = b""
    position = 0
    view = memoryview(raw)
    while position < len(raw):
        key, position = _varint(raw, position, what)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(raw, position, what)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _varint(raw, position, what)
            end = position + length
            if end > len(raw):
                raise DataLoss(f"{what}: a response does not parse")
            if field == 1:
                directories.append(bytes(view[position:end]))
            elif field == 2:
                token = bytes(view[position:end])
            position = end
        else:
            raise DataLoss(f"{what}: a response does not parse (wire type {wire})")
    if position != len(raw):
        raise DataLoss(f"{what}: a response does not parse")
    return directories, token
