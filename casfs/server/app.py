"""The embedded CAS server: a grpcio server with the REAPI services (ByteStream, CAS,
Capabilities, ActionCache), the Remote Asset API and tvix castore over ``Instances``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_asset_pb2 as ra_pb2
from casfs._proto import remote_asset_pb2_grpc as ra_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs._proto.tvix import (
    rpc_blobstore_pb2,
    rpc_blobstore_pb2_grpc,
    rpc_directory_pb2,
    rpc_directory_pb2_grpc,
)
from casfs.config import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS
from casfs.rpcstats import RpcStats
from casfs.server.actioncache import ActionCacheServicer
from casfs.server.assets import AssetServicer
from casfs.server.auth import Token, TokenAuth
from casfs.server.bytestream import ByteStreamServicer
from casfs.server.capabilities import CapabilitiesServicer
from casfs.server.cas import CasServicer
from casfs.server.decoding import DecodeGuard
from casfs.server.instances import Instances
from casfs.server.streams import StreamGuard
from casfs.server.tvix_blobs import TvixBlobServicer
from casfs.server.tvix_directories import TvixDirectoryServicer

log = logging.getLogger("casfs.server")

# Accept messages well above the advertised batch limit, so that a client that counts a
# little differently is not cut off by the transport.
MAX_MESSAGE_BYTES = 16 << 20

# What a server registers: a service's descriptor (its methods, for the metrics' labels)
# and the call that adds its servicer. One list, so a service cannot be served unnamed.
Registration = tuple[ServiceDescriptor, Callable[[grpc.Server], None]]


def _services(instances: Instances, streams: StreamGuard) -> list[Registration]:
    """Every service ``build_server`` serves, over ``instances``."""
    assets = AssetServicer(instances)
    bytestream = bytestream_pb2.DESCRIPTOR.services_by_name
    reapi = re_pb2.DESCRIPTOR.services_by_name
    asset = ra_pb2.DESCRIPTOR.services_by_name
    return [
        (
            bytestream["ByteStream"],
            partial(
                bytestream_pb2_grpc.add_ByteStreamServicer_to_server,
                ByteStreamServicer(instances, streams),
            ),
        ),
        (
            reapi["ContentAddressableStorage"],
            partial(
                re_grpc.add_ContentAddressableStorageServicer_to_server,
                CasServicer(instances, streams),
            ),
        ),
        (
            reapi["Capabilities"],
            partial(re_grpc.add_CapabilitiesServicer_to_server, CapabilitiesServicer(instances)),
        ),
        (
            reapi["ActionCache"],
            partial(re_grpc.add_ActionCacheServicer_to_server, ActionCacheServicer(instances)),
        ),
        (asset["Fetch"], partial(ra_grpc.add_FetchServicer_to_server, assets)),
        (asset["Push"], partial(ra_grpc.add_PushServicer_to_server, assets)),
        (
            rpc_blobstore_pb2.DESCRIPTOR.services_by_name["BlobService"],
            partial(
                rpc_blobstore_pb2_grpc.add_BlobServiceServicer_to_server,
                TvixBlobServicer(instances, streams),
            ),
        ),
        (
            rpc_directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"],
            partial(
                rpc_directory_pb2_grpc.add_DirectoryServiceServicer_to_server,
                TvixDirectoryServicer(instances, streams),
            ),
        ),
    ]


class ListenError(OSError):
    """The server could not bind its listen address."""


@dataclass(frozen=True, slots=True)
class Security:
    """TLS files and bearer tokens for the server; the defaults mean plaintext, no auth."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: tuple[Token, ...] = ()

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert is None and self.tls_key is None:
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("TLS needs both a certificate and its key")
        pair = (self.tls_key.read_bytes(), self.tls_cert.read_bytes())
        return grpc.ssl_server_credentials([pair])


def listen_address(listen: str, port: int) -> str:
    """Where a server listening on ``listen`` is reached: its port filled in if it picked
    one (``host:0``); a unix socket's path as it is (it has no port)."""
    return listen if listen.startswith("unix:") else f"{listen.rpartition(':')[0]}:{port}"


def build_server(
    instances: Instances,
    listen: str,
    *,
    security: Security | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    stream_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    rpc_stats: RpcStats | None = None,
) -> tuple[grpc.Server, int]:
    """A started server on ``listen`` (``host:port``; port 0 picks one) and its port.

    Streams each hold a worker thread while they run: at most ``max_streams`` run at once
    (more are refused with RESOURCE_EXHAUSTED) and one silent for ``stream_idle_timeout``
    seconds is ended, while unary calls keep threads of their own (see ``streams.py``).
    With ``rpc_stats`` every call is counted and timed, those refused for their token
    included. Raises ``ListenError`` if ``listen`` cannot be bound.
    """
    streams = StreamGuard(max_streams, stream_idle_timeout)
    security = security or Security()
    services = _services(instances, streams)
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = []
    if rpc_stats is not None:
        served = frozenset(f"/{d.full_name}/{m.name}" for d, _ in services for m in d.methods)
        interceptors.append(rpc_stats.server_interceptor(served))
    if security.tokens:
        interceptors.append(TokenAuth(security.tokens))
    interceptors.append(DecodeGuard())  # innermost: it wraps the servicers' own handlers
    server = grpc.server(
        ThreadPoolExecutor(max_workers=streams.threads, thread_name_prefix="casfs-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    for _, register in services:
        register(server)
    credentials = security.credentials()
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {listen}: {error}") from error
    if port == 0:
        raise ListenError(f"cannot listen on {listen}")
    server.start()
    log.info("serving instances %r on %s", instances.names, listen_address(listen, port))
    return server, port
