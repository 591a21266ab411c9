"""``casfs serve`` against hostile and careless clients (issue 13): each test drives a real
server on 127.0.0.1 with raw gRPC stubs, so that requests a well-behaved client would never
send get through, and checks what the server's other users would notice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from casfs._proto import bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.digest import Digest, DigestFunction
from tests.servers import CasfsServer

Code = grpc.StatusCode


@dataclass
class Stubs:
    """Raw stubs on one channel to a test server."""

    channel: grpc.Channel
    cas: re_grpc.ContentAddressableStorageStub
    bytestream: bytestream_pb2_grpc.ByteStreamStub
    capabilities: re_grpc.CapabilitiesStub
    actions: re_grpc.ActionCacheStub


@pytest.fixture
def connect() -> Iterator[type[Stubs]]:
    """``connect(server)``: stubs on a fresh channel, closed after the test."""
    channels: list[grpc.Channel] = []

    def make(server: CasfsServer) -> Stubs:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return Stubs(
            channel,
            re_grpc.ContentAddressableStorageStub(channel),
            bytestream_pb2_grpc.ByteStreamStub(channel),
            re_grpc.CapabilitiesStub(channel),
            re_grpc.ActionCacheStub(channel),
        )

    yield make  # type: ignore[misc]
    for channel in channels:
        channel.close()


def batch_update(
    stubs: Stubs, blobs: list[tuple[Digest, bytes]], compressor: int = 0
) -> list[tuple[int, str]]:
    """BatchUpdateBlobs of ``blobs`` (all of the first one's digest function); each item's
    ``(code, message)``."""
    request = re_pb2.BatchUpdateBlobsRequest(
        instance_name="main", digest_function=blobs[0][0].function.value
    )
    for digest, data in blobs:
        request.requests.add(digest=digest.to_proto(), data=data, compressor=compressor)
    response = stubs.cas.BatchUpdateBlobs(request, timeout=30)
    return [(r.status.code, r.status.message) for r in response.responses]


def batch_read(stubs: Stubs, digests: list[Digest]) -> list[tuple[int, bytes]]:
    request = re_pb2.BatchReadBlobsRequest(
        instance_name="main",
        digest_function=digests[0].function.value,
        digests=[d.to_proto() for d in digests],
    )
    response = stubs.cas.BatchReadBlobs(request, timeout=30)
    return [(r.status.code, r.data) for r in response.responses]


# -- 1: the store always opens again ----------------------------------------------------------


def test_a_store_with_blobs_of_two_digest_functions_used_at_once_opens_again(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    data = b"two functions, one moment"
    digests = [Digest.of_bytes(data, f) for f in (DigestFunction.SHA256, DigestFunction.BLAKE3)]
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        for digest in digests:
            assert batch_update(stubs, [(digest, data)]) == [(0, "")]
        server.stop()
        # Used in the same instant: the start-up scan orders blobs by their last use.
        for blob in (tmp_path / "store" / "cas").glob("*/*/*"):
            os.utime(blob, (1_700_000_000, 1_700_000_000))
        server.start()
        for digest in digests:
            assert batch_read(connect(server), [digest]) == [(0, data)]
