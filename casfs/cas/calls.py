"""How ``CasClient`` makes a call: the channel it is given, deadlines and headers, unary
calls awaited without a thread, streaming steps in worker threads under one limiter, the
retries of ``cas/retry.py``, and the cached capabilities. The calls themselves are in
``batches``, ``reads``, ``writes`` and ``client``, each a layer over this one.

Cancelling the trio task cancels the grpc call; grpc errors leave only as ``CasError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import trio

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.cas.capabilities import Capabilities
from casfs.cas.channel import call_metadata, open_channel
from casfs.cas.errors import Unimplemented, from_rpc_error
from casfs.cas.quirks import RemoteQuirks
from casfs.cas.retry import with_retries
from casfs.cas.warmth import ChannelWarmth
from casfs.config import RemoteConfig
from casfs.digest import Digest
from casfs.resource import Compressor
from casfs.rpcstats import RpcStats

T = TypeVar("T")
# A piece of a blob as it arrived: bytes, or a view into the received message (no copy).
Chunk: TypeAlias = bytes | memoryview
# Opens the channel a client talks over (``open_channel`` by default; a test may hand an
# in-process one). The client owns what it returns and closes it in ``aclose``.
ChannelFactory: TypeAlias = Callable[[RemoteConfig], grpc.Channel]


class _Future(Protocol):
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...
    def cancel(self) -> bool: ...
    def result(self) -> Any: ...


async def await_future(future: _Future, what: str) -> Any:
    """Sleep until a grpc future is done, without a thread; cancel it if we are cancelled."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    try:
        return future.result()
    except grpc.RpcError as error:
        raise from_rpc_error(error, what) from None


class ClientCore:
    """The channel, the stubs and the plumbing every call of ``CasClient`` uses."""

    def __init__(
        self,
        config: RemoteConfig,
        *,
        channel: ChannelFactory = open_channel,
        rpc_stats: RpcStats | None = None,
        quirks: RemoteQuirks | None = None,
    ) -> None:
        """``channel`` opens the channel from ``config`` (``open_channel``: endpoint, TLS);
        ``quirks``: what is known of the remote's habits, shared with the other clients
        of the same endpoint (a fresh record if None)."""
        self.config = config
        self.quirks = quirks if quirks is not None else RemoteQuirks(config.endpoint)
        self.instance = config.instance
        self._metadata = call_metadata(config)
        self._channel = channel(config)
        # One call held pending between unary calls, so grpc's spin thread is not started
        # anew for each (cas/warmth.py). On the raw channel: it is not counted.
        self.warmth = ChannelWarmth(self._channel, self._metadata)
        if rpc_stats is not None:  # metrics asked for: count and time every call
            self._channel = rpc_stats.client_channel(self._channel)
        self.resumed_writes = 0  # ByteStream Writes resumed at the server's committed_size
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(self._channel)
        # ByteStream.Read answering undecoded messages: the data is cut out of them by
        # reads.read_response_data, one copy fewer per message than a parse and a field access.
        self._raw_read = self._channel.unary_stream(
            "/google.bytestream.ByteStream/Read",
            request_serializer=bytestream_pb2.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        self._cas = re_grpc.ContentAddressableStorageStub(self._channel)
        self._capabilities_stub = re_grpc.CapabilitiesStub(self._channel)
        self._limiter = trio.CapacityLimiter(config.max_concurrent_streams)
        self._capabilities: Capabilities | None = None
        self._capabilities_lock = trio.Lock()

    async def aclose(self) -> None:
        """Close the channel; calls still running fail with CANCELLED."""
        self._channel.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _stream_timeout(self, nbytes: int) -> float:
        return self.config.rpc_timeout + nbytes / self.config.min_stream_rate

    async def _unary(self, method: Any, request: Any, what: str) -> Any:
        """One unary call with the deadline and headers; no retries."""
        self.warmth.touch()
        future = method.future(request, timeout=self.config.rpc_timeout, metadata=self._metadata)
        return await await_future(future, what)

    async def _retrying_unary(self, method: Any, request: Any, what: str) -> Any:
        return await with_retries(
            lambda: self._unary(method, request, what), self.config.retry, what
        )

    async def _in_thread(self, fn: Callable[[], T], call: grpc.Call, what: str) -> T:
        """Run a blocking step of a streaming call in a worker thread.

        On trio cancellation the thread is abandoned and the call cancelled, which wakes it.
        """
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except grpc.RpcError as error:
            raise from_rpc_error(error, what) from None
        except BaseException:
            call.cancel()
            raise

    async def capabilities(self) -> Capabilities:
        """The server's capabilities, asked once and cached.

        A server without the Capabilities service (UNIMPLEMENTED) is taken to support
        sha256, no compressors and no advertised batch limit.
        """
        async with self._capabilities_lock:
            if self._capabilities is None:
                request = re_pb2.GetCapabilitiesRequest(instance_name=self.instance)
                what = f"GetCapabilities {self.instance!r}"
                try:
                    caps = await self._retrying_unary(
                        self._capabilities_stub.GetCapabilities, request, what
                    )
                except Unimplemented:
                    caps = re_pb2.ServerCapabilities()
                self._capabilities = Capabilities.from_proto(caps)
            return self._capabilities

    async def fits_batch(self, digest: Digest) -> bool:
        """Whether a blob goes in a batch call (BatchReadBlobs, BatchUpdateBlobs) rather than
        a ByteStream: the one rule of batch or stream, for reads and uploads alike."""
        return digest.size <= (await self.capabilities()).batch_budget()

    async def _wire_compressor(self, digest: Digest, preferred: Sequence[Compressor]) -> Compressor:
        """The compressor to use for a blob: only when asked for and advertised."""
        if not self.config.compression or digest.size < 4096:
            return Compressor.IDENTITY
        advertised = (await self.capabilities()).compressors
        return next((c for c in preferred if c in advertised), Compressor.IDENTITY)
