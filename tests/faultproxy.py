"""A fault-injecting gRPC proxy for tests: forwards every REAPI/ByteStream call to a real
server on 127.0.0.1, and breaks it the ways real networks and real servers do.

It runs in the test process (a grpc server on its own threads) and passes messages through
as raw bytes; it parses only what a fault needs. The faults are plain attributes, so a test
can switch them while a mount uses the proxy:

- ``cut_reads = (after, times)``: the next ``times`` Read streams end with UNAVAILABLE once
  they have passed ``after`` bytes (a connection that breaks mid-stream).
- ``short_reads = (after, times)``: the next ``times`` Read streams end *successfully* after
  ``after`` bytes of data, short of what was asked (a buggy server).
- ``cut_writes = (after, times)``: the next ``times`` Write streams are ended upstream after
  ``after`` bytes (the server keeps what it got) and fail with UNAVAILABLE to the client.
- ``refuse_half_close``: a Write stream that reaches the server without finish_write (one
  ended by ``cut_writes``) is answered UNIMPLEMENTED, "Cannot close stream before finishing
  write", instead of UNAVAILABLE (a server that cannot resume).
- ``query_write_status_unimplemented``: QueryWriteStatus answers UNIMPLEMENTED (buildbox-casd).
- ``refuse_limits_past_eof``: a Read whose ``read_limit`` runs past the blob's end gets
  INVALID_ARGUMENT (buildbox-casd).
- ``block_reads``: Reads are served in whole 1 MiB blocks only. A Read whose
  ``read_limit`` is not a multiple of 1 MiB and stops short of the blob's end is refused
  with DATA_LOSS (``"refuse"``) or answered up to the next block boundary, more than asked
  (``"overshoot"``).
- ``by_hash_store``: the upstream's store directory, to answer by hash alone, whatever the
  size: FindMissingBlobs says a blob is present if the store holds its hash, and Read and
  BatchReadBlobs serve the stored blob under any size (a read past its real end is
  OUT_OF_RANGE, as upstream says). Counted when a wrong size is reported present.
- ``reorder_batch_reads``: BatchReadBlobs answers come in reverse order.
- ``max_batch_zero``: Capabilities advertise ``max_batch_total_size_bytes = 0``.

``calls`` counts the calls per method and ``injected`` the faults applied, per fault name,
so that a test can check the fault really happened.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from casfs._proto import bytestream_pb2
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.digest import Digest, DigestFunction
from casfs.resource import parse_read_name
from tests.servers import Managed

_READ = "/google.bytestream.ByteStream/Read"
_WRITE = "/google.bytestream.ByteStream/Write"
_QUERY = "/google.bytestream.ByteStream/QueryWriteStatus"
_BATCH_READ = "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"
_FIND_MISSING = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
_CAPABILITIES = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"
_STREAMING_RESPONSES = {_READ, "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree"}
_MESSAGE_LIMIT = 64 << 20
_BLOCK = 1 << 20


class FaultProxy(Managed):
    """A proxy on ``127.0.0.1:<port>`` in front of ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut_reads: tuple[int, int] = (0, 0)
        self.short_reads: tuple[int, int] = (0, 0)
        self.cut_writes: tuple[int, int] = (0, 0)
        self.query_write_status_unimplemented = False
        self.refuse_half_close = False
        self.refuse_limits_past_eof = False
        self.block_reads: str | None = None
        self.by_hash_store: Path | None = None
        self.reorder_batch_reads = False
        self.max_batch_zero = False
        self.calls: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        options = [
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
        ]
        self._channel = grpc.insecure_channel(self.upstream, options=options)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="fault-proxy"),
            handlers=[_Handler(self)],
            options=options,
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
        if self._channel is not None:
            self._channel.close()

    def reset(self) -> None:
        """Switch every fault off."""
        self.cut_reads = self.short_reads = self.cut_writes = (0, 0)
        self.query_write_status_unimplemented = self.refuse_limits_past_eof = False
        self.reorder_batch_reads = self.max_batch_zero = False
        self.block_reads = self.by_hash_store = None
        self.refuse_half_close = False

    def _take(self, fault: str) -> int | None:
        """The byte budget of a cut fault if one is due (and count it), else None."""
        with self._lock:
            after, times = getattr(self, fault)
            if times <= 0:
                return None
            setattr(self, fault, (after, times - 1))
            self.injected[fault] += 1
            return int(after)

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    # -- one method each; ``raw`` requests and answers are serialized messages ---------------

    def unary(self, method: str, raw: bytes, context: grpc.ServicerContext) -> bytes:
        self._count(method)
        if method == _QUERY and self.query_write_status_unimplemented:
            self.injected["query_write_status_unimplemented"] += 1
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "QueryWriteStatus is not implemented")
        if method == _FIND_MISSING and self.by_hash_store is not None:
            return self._find_missing_by_hash(raw)
        if method == _BATCH_READ and self.by_hash_store is not None:
            return self._batch_read_by_hash(raw, context)
        answer = self._forward_unary(method, raw, context)
        if method == _BATCH_READ and self.reorder_batch_reads:
            response = re_pb2.BatchReadBlobsResponse.FromString(answer)
            if len(response.responses) > 1:
                self.injected["reorder_batch_reads"] += 1
            reordered = re_pb2.BatchReadBlobsResponse(responses=reversed(response.responses))
            answer = reordered.SerializeToString()
        if method == _CAPABILITIES and self.max_batch_zero:
            caps = re_pb2.ServerCapabilities.FromString(answer)
            caps.cache_capabilities.max_batch_total_size_bytes = 0
            self.injected["max_batch_zero"] += 1
            answer = caps.SerializeToString()
        return answer

    # -- by_hash_store: a server that ignores sizes --------------------------------------

    def _stored_size(self, digest: Digest) -> int | None:
        """The size of the stored blob with ``digest``'s hash, whatever ``digest`` says."""
        assert self.by_hash_store is not None
        function = digest.function.name_lower
        path = self.by_hash_store / "cas" / function / digest.hash[:2] / digest.hash
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    def _by_hash(self, digest: Digest) -> Digest:
        """``digest`` with the stored blob's size (itself if none is stored)."""
        size = self._stored_size(digest)
        if size is not None and size != digest.size:
            with self._lock:
                self.injected["by_hash"] += 1
            return dataclasses.replace(digest, size=size)
        return digest

    def _find_missing_by_hash(self, raw: bytes) -> bytes:
        request = re_pb2.FindMissingBlobsRequest.FromString(raw)
        function = DigestFunction(request.digest_function or DigestFunction.SHA256.value)
        digests = [Digest.from_proto(d, function) for d in request.blob_digests]
        missing = []
        for digest in digests:
            if digest.size and self._stored_size(digest) is None:
                missing.append(digest.to_proto())
            else:
                self._by_hash(digest)  # counts a wrong size reported present
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing).SerializeToString()

    def _batch_read_by_hash(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        request = re_pb2.BatchReadBlobsRequest.FromString(raw)
        function = DigestFunction(request.digest_function or DigestFunction.SHA256.value)
        asked = {self._by_hash(Digest.from_proto(d, function)).to_proto().SerializeToString(): d
                 for d in request.digests}  # fmt: skip
        request.ClearField("digests")
        request.digests.extend(re_pb2.Digest.FromString(key) for key in asked)
        answer = re_pb2.BatchReadBlobsResponse.FromString(
            self._forward_unary(_BATCH_READ, request.SerializeToString(), context)
        )
        for item in answer.responses:  # under the names asked for
            item.digest.CopyFrom(asked[item.digest.SerializeToString()])
        return answer.SerializeToString()

    def _read_by_hash(self, request: bytestream_pb2.ReadRequest) -> bytes:
        name = parse_read_name(request.resource_name)
        stored = dataclasses.replace(name, digest=self._by_hash(name.digest))
        request.resource_name = stored.read_name()
        return request.SerializeToString()

    def _forward_unary(self, method: str, raw: bytes, context: grpc.ServicerContext) -> bytes:
        assert self._channel is not None
        call = self._channel.unary_unary(method, None, None)
        try:
            answer: bytes = call(
                raw, timeout=context.time_remaining(), metadata=_metadata(context)
            )
        except grpc.RpcError as error:
            _relay(error, context)
        return answer

    def server_stream(
        self, method: str, raw: bytes, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self._count(method)
        budget = short = None
        if method == _READ:
            request = bytestream_pb2.ReadRequest.FromString(raw)
            if self.refuse_limits_past_eof and request.read_limit:
                size = parse_read_name(request.resource_name).digest.size
                if request.read_offset + request.read_limit > size:
                    self.injected["refuse_limits_past_eof"] += 1
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "read_limit runs past the blob's end"
                    )
            raw = self._whole_blocks(request, context) or raw
            if self.by_hash_store is not None:
                raw = self._read_by_hash(request)
            budget = self._take("cut_reads")
            short = self._take("short_reads")
        assert self._channel is not None
        call = self._channel.unary_stream(method, None, None)(
            raw, timeout=context.time_remaining(), metadata=_metadata(context)
        )
        passed = 0
        try:
            for answer in call:
                if short is not None and passed + len(answer) > short:
                    data = bytestream_pb2.ReadResponse.FromString(answer).data[: short - passed]
                    yield bytestream_pb2.ReadResponse(data=data).SerializeToString()
                    call.cancel()
                    return
                yield answer
                passed += len(answer)
                if budget is not None and passed >= budget:
                    call.cancel()
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"stream cut after {passed} bytes")
        except grpc.RpcError as error:
            _relay(error, context)

    def _whole_blocks(
        self, request: bytestream_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> bytes | None:
        """For ``block_reads``: refuse a Read that is not in whole blocks, or return it
        widened to whole blocks (None: forward it as it is)."""
        if self.block_reads is None or not request.read_limit or request.read_limit % _BLOCK == 0:
            return None
        size = parse_read_name(request.resource_name).digest.size
        if request.read_offset + request.read_limit >= size:
            return None
        with self._lock:
            self.injected["block_reads"] += 1
        if self.block_reads == "refuse":
            blocks = request.read_limit // _BLOCK * _BLOCK
            context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"Blob incomplete: {request.resource_name}. Only read {blocks} bytes",
            )
        request.read_limit = -(-request.read_limit // _BLOCK) * _BLOCK
        return request.SerializeToString()

    def client_stream(
        self, method: str, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> bytes:
        self._count(method)
        budget = self._take("cut_writes") if method == _WRITE else None
        cut = threading.Event()

        def forwarded() -> Iterator[bytes]:
            passed = 0
            for request in requests:
                yield request
                passed += len(request)
                if budget is not None and passed >= budget:
                    cut.set()  # end the upstream stream here: the server keeps what it has
                    return

        assert self._channel is not None
        call = self._channel.stream_unary(method, None, None)
        try:
            answer: bytes = call(
                forwarded(), timeout=context.time_remaining(),
                metadata=_metadata(context),
            )  # fmt: skip
        except grpc.RpcError as error:
            _relay(error, context)
        if cut.is_set() and self.refuse_half_close:
            with self._lock:
                self.injected["refuse_half_close"] += 1
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "Cannot close stream before finishing write"
            )
        if cut.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream cut")
        return answer


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    """The client's headers to pass on (grpc sets its own transport headers)."""
    return [
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith("grpc-") and key != "user-agent"
    ]


def _relay(error: grpc.RpcError, context: grpc.ServicerContext) -> Any:
    """Pass the upstream's failure on to the client unchanged."""
    if isinstance(error, grpc.Call):
        context.abort(error.code(), error.details() or "")
    context.abort(grpc.StatusCode.UNKNOWN, str(error))


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method  # type: ignore[attr-defined]
        proxy = self.proxy

        def bind(fn: Callable[..., Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
            return lambda request, context: fn(method, request, context)

        if method == _WRITE:
            return grpc.stream_unary_rpc_method_handler(bind(proxy.client_stream))
        if method in _STREAMING_RESPONSES:
            return grpc.unary_stream_rpc_method_handler(bind(proxy.server_stream))
        return grpc.unary_unary_rpc_method_handler(bind(proxy.unary))
