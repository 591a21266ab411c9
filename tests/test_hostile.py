"""``casfs serve`` against hostile and careless clients (issue 13): each test drives a real
server on 127.0.0.1 with raw gRPC stubs, so that requests a well-behaved client would never
send get through, and checks what the server's other users would notice."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import zstandard

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.digest import Digest, DigestFunction
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_observability import Scrape, metrics_url

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


# -- 6: only the empty blob has size 0 ----------------------------------------------------------


def rpc_code(call: Callable[[], object]) -> Code:
    """The status code a call ends with."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return Code.OK


def write_code(stubs: Stubs, *requests: bytestream_pb2.WriteRequest) -> Code:
    """The status code of one Write stream of ``requests``."""
    return rpc_code(lambda: stubs.bytestream.Write(iter(requests), timeout=30))


def test_size_zero_is_present_only_for_the_empty_blobs_hash(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    empty, bogus = Digest.empty(), Digest("ab" * 32, 0)
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        missing = stubs.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(
                instance_name="main", blob_digests=[empty.to_proto(), bogus.to_proto()]
            ),
            timeout=30,
        ).missing_blob_digests
        assert [Digest.from_proto(d) for d in missing] == [bogus]
        assert batch_read(stubs, [empty, bogus]) == [(0, b""), (Code.NOT_FOUND.value[0], b"")]
        read = bytestream_pb2.ReadRequest(resource_name=f"main/blobs/{bogus}")
        assert rpc_code(lambda: list(stubs.bytestream.Read(read, timeout=30))) == Code.NOT_FOUND
        write = bytestream_pb2.WriteRequest(
            resource_name=f"main/uploads/{uuid.uuid4()}/blobs/{bogus}", finish_write=True
        )
        assert write_code(stubs, write) == Code.INVALID_ARGUMENT
        [(code_value, _)] = batch_update(stubs, [(bogus, b"")])
        assert code_value == Code.INVALID_ARGUMENT.value[0]
        with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint) as mounted:
            blobs = mounted.mountpoint / "main" / "blobs"
            assert (blobs / str(empty)).read_bytes() == b""
            assert not (blobs / str(bogus)).exists()  # ENOENT


# -- 2: decompression bombs ---------------------------------------------------------------------


def zstd_bomb(declared: int, blocks: int) -> bytes:
    """A zstd frame declaring ``declared`` bytes, made of ``blocks`` RLE blocks of 128 KiB
    each (4 bytes apiece on the wire)."""
    header = (0xFD2FB528).to_bytes(4, "little") + bytes([0x80, 0x38])  # 4-byte size, 128 KiB
    frame = bytearray(header + declared.to_bytes(4, "little"))
    for index in range(blocks):
        last = index == blocks - 1
        frame += (last | 1 << 1 | (128 << 10) << 3).to_bytes(3, "little") + b"\0"
    return bytes(frame)


def rss(pid: int) -> int:
    """The resident memory of a process, in bytes (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def test_decompression_bombs_are_refused_without_using_memory(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    small = b"a small blob"
    digest = Digest.of_bytes(small)
    bomb = zstd_bomb(2**31, 16 << 10)  # 64 KiB that unpack to 2 GiB
    undeclared = bomb[:4] + bytes([0x00, 0x38]) + bomb[10:]  # the same blocks, no size
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        stubs.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=30)
        before = rss(server.process.pid)  # type: ignore[union-attr]
        zstd = 1  # Compressor.ZSTD
        for data in (bomb, undeclared, bomb):
            request = re_pb2.BatchUpdateBlobsRequest(instance_name="main")
            request.requests.add(digest=digest.to_proto(), data=data, compressor=zstd)
            request.requests.add(digest=digest.to_proto(), data=b"not zstd", compressor=zstd)
            other = b"stored beside the bombs"
            packed = zstandard.ZstdCompressor().compress(other)
            request.requests.add(
                digest=Digest.of_bytes(other).to_proto(), data=packed, compressor=zstd
            )
            answers = stubs.cas.BatchUpdateBlobs(request, timeout=30).responses
            invalid = Code.INVALID_ARGUMENT.value[0]
            assert [r.status.code for r in answers] == [invalid, invalid, 0]
            name = f"main/uploads/{uuid.uuid4()}/compressed-blobs/zstd/{digest}"
            write = bytestream_pb2.WriteRequest(resource_name=name, data=data, finish_write=True)
            assert write_code(stubs, write) == Code.INVALID_ARGUMENT
        growth = rss(server.process.pid) - before  # type: ignore[union-attr]
        assert growth < 100 << 20, f"the server grew by {growth >> 20} MiB"
        assert batch_read(stubs, [digest]) == [(Code.NOT_FOUND.value[0], b"")]


# -- 3: idle and numerous streams ---------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def parts(server: CasfsServer) -> int:
    """How many partial uploads the server holds."""
    return len(list((server.store / "uploads").glob("*.part")))


class StalledWrites:
    """Write streams that each send one message (a third of a blob) and then stall until
    ``release``; ``results`` are their outcomes (status code, details)."""

    def __init__(self, stubs: Stubs, count: int, data: bytes = b"stalled " * 1000) -> None:
        self.digest = Digest.of_bytes(data)
        self.data = data
        self.go = threading.Event()
        self.names = [f"main/uploads/{uuid.uuid4()}/blobs/{self.digest}" for _ in range(count)]
        self.futures = [
            stubs.bytestream.Write.future(self._requests(name), timeout=120)
            for name in self.names
        ]

    def _requests(self, name: str) -> Iterator[bytestream_pb2.WriteRequest]:
        yield bytestream_pb2.WriteRequest(resource_name=name, data=self.data[: len(self.data) // 3])
        self.go.wait(timeout=100)

    def release(self) -> list[tuple[Code, str]]:
        self.go.set()
        results = []
        for future in self.futures:
            try:
                future.result()
                results.append((Code.OK, ""))
            except grpc.RpcError as error:
                results.append((error.code(), error.details()))  # type: ignore[attr-defined]
        return results


def test_unary_calls_are_answered_while_200_streams_sit_idle(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    ask = re_pb2.GetCapabilitiesRequest(instance_name="main")
    with CasfsServer(tmp_path / "store") as server:
        unary = connect(server).capabilities
        unary.GetCapabilities(ask, timeout=30)  # connected before the streams come
        stalled = StalledWrites(connect(server), 200)
        try:
            wait_until(lambda: parts(server) == 200, "200 streams to be held")
            capabilities = unary.GetCapabilities(ask, timeout=1)
            assert capabilities.cache_capabilities.max_batch_total_size_bytes > 0
        finally:
            results = stalled.release()
        assert results == [(Code.OK, "")] * 200  # ended without finish_write: kept


def test_streams_past_max_streams_are_refused_at_once(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    with CasfsServer(tmp_path / "store", "--max-streams", "2") as server:
        stubs = connect(server)
        stalled = StalledWrites(stubs, 2)
        try:
            wait_until(lambda: parts(server) == 2, "2 streams to be held")
            read = bytestream_pb2.ReadRequest(resource_name=f"main/blobs/{Digest.empty()}")
            try:
                list(stubs.bytestream.Read(read, timeout=30))
            except grpc.RpcError as error:
                assert error.code() == Code.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert "--max-streams" in error.details()  # type: ignore[attr-defined]
            else:
                raise AssertionError("a third stream was served")
        finally:
            stalled.release()
        assert list(stubs.bytestream.Read(read, timeout=30)) == []  # slots are given back


def test_an_idle_write_is_ended_and_its_upload_resumes(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    with CasfsServer(tmp_path / "store", "--stream-idle-timeout", "1") as server:
        stubs = connect(server)
        stalled = StalledWrites(stubs, 1)
        try:
            error = stalled.futures[0].exception(timeout=60)  # ended by the server, not us
        finally:
            stalled.release()
        assert isinstance(error, grpc.Call)
        assert error.code() == Code.DEADLINE_EXCEEDED, error
        assert "no message for 1 seconds" in error.details(), error  # type: ignore[operator]
        [name] = stalled.names
        status = stubs.bytestream.QueryWriteStatus(
            bytestream_pb2.QueryWriteStatusRequest(resource_name=name), timeout=30
        )
        third = len(stalled.data) // 3
        assert (status.committed_size, status.complete) == (third, False)
        rest = bytestream_pb2.WriteRequest(
            resource_name=name, write_offset=third, data=stalled.data[third:], finish_write=True
        )
        assert write_code(stubs, rest) == Code.OK
        assert batch_read(stubs, [stalled.digest]) == [(0, stalled.data)]


def test_a_reader_that_stops_reading_is_ended(tmp_path: Path, connect: type[Stubs]) -> None:
    data = os.urandom(1 << 20) * 64
    digest = Digest.of_bytes(data)
    with CasfsServer(tmp_path / "store", "--stream-idle-timeout", "1") as server:
        stubs = connect(server)
        name = f"main/uploads/{uuid.uuid4()}/blobs/{digest}"
        chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        writes = [
            bytestream_pb2.WriteRequest(
                resource_name=name, write_offset=i << 20, data=chunk,
                finish_write=i == len(chunks) - 1,
            )
            for i, chunk in enumerate(chunks)
        ]  # fmt: skip
        assert write_code(stubs, *writes) == Code.OK
        responses = stubs.bytestream.Read(
            bytestream_pb2.ReadRequest(resource_name=f"main/blobs/{digest}"), timeout=120
        )
        received = 0
        with pytest.raises(grpc.RpcError) as ended:
            received += len(next(responses).data)
            ended_idle = "Read: no message for 1 seconds"
            wait_until(lambda: ended_idle in server.log.read_text(), "the server to end it")
            for response in responses:
                received += len(response.data)
        assert ended.value.code() == Code.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert received < len(data)


# -- 5: metrics label sets ----------------------------------------------------------------------


def test_made_up_method_names_share_one_metrics_series(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    (tmp_path / "tokens").write_text("s3cret\n")
    args = ("--token-file", str(tmp_path / "tokens"), "--metrics", "127.0.0.1:0")
    with CasfsServer(tmp_path / "store", *args) as server:
        channel = connect(server).channel
        for index in range(300):
            call = channel.unary_unary(f"/made.up.Service{index}/Method{index}")
            assert rpc_code(lambda: call(b"", timeout=30)) == Code.UNAUTHENTICATED  # noqa: B023
        url = metrics_url(server.log.read_text())
        scrape = Scrape.of(url)
        methods = {
            labels["grpc_method"]
            for name, labels, _ in scrape.samples
            if name == "casfs_grpc_server_handled_total"
        }
        assert methods == {"other"}
        assert scrape.value("casfs_grpc_server_handled_total", grpc_method="other") == 300
        with urllib.request.urlopen(url, timeout=10) as response:
            assert len(response.read()) < 100_000


# -- 7: echoed names, digest functions, permissions, undecodable messages ---------------------


def test_a_huge_instance_name_is_refused_with_a_short_message(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        request = re_pb2.GetCapabilitiesRequest(instance_name="x" * 20_000)
        with pytest.raises(grpc.RpcError) as refused:
            stubs.capabilities.GetCapabilities(request, timeout=30)
        assert refused.value.code() == Code.INVALID_ARGUMENT  # type: ignore[attr-defined]
        details = refused.value.details()  # type: ignore[attr-defined]
        assert "unknown instance name" in details and len(details) <= 1000


def test_only_advertised_digest_functions_are_stored(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    data = b"a legacy digest"
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        capabilities = stubs.capabilities.GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name="main"), timeout=30
        ).cache_capabilities
        advertised = {re_pb2.DigestFunction.Value.Name(f) for f in capabilities.digest_functions}
        for function in DigestFunction:
            if not function.hashable:
                continue
            digest = Digest.of_bytes(data, function)
            [(code, message)] = batch_update(stubs, [(digest, data)])
            segment = f"{function.name_lower}/" if function.in_resource_name else ""
            name = f"main/uploads/{uuid.uuid4()}/blobs/{segment}{digest}"
            write = bytestream_pb2.WriteRequest(resource_name=name, data=data, finish_write=True)
            if function.name in advertised:
                assert (code, write_code(stubs, write)) == (0, Code.OK), function
            else:
                assert code == Code.INVALID_ARGUMENT.value[0], function
                assert "not supported" in message
                assert write_code(stubs, write) == Code.INVALID_ARGUMENT, function
        stored = {p.name for p in (server.store / "cas").iterdir()}
        assert stored == {f.lower() for f in advertised}


def test_the_store_is_private_throughout(tmp_path: Path, connect: type[Stubs]) -> None:
    data = b"private"
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        digest = Digest.of_bytes(data)
        assert batch_update(stubs, [(digest, data)]) == [(0, "")]
        stubs.actions.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(
                instance_name="main",
                action_digest=digest.to_proto(),
                action_result=re_pb2.ActionResult(exit_code=0),
            ),
            timeout=30,
        )
        partial = bytestream_pb2.WriteRequest(
            resource_name=f"main/uploads/{uuid.uuid4()}/blobs/{Digest.of_bytes(data * 2)}",
            data=data,
        )
        assert write_code(stubs, partial) == Code.OK
        found = list(server.store.rglob("*"))
        assert {p.name for p in server.store.iterdir()} >= {"cas", "ac", "uploads", "tmp"}
        assert any(p.name.endswith(".part") for p in found)
        for path in [server.store, *found]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_undecodable_messages_are_invalid_argument_logged_in_one_line(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    garbage = b"\xff\xff\xff\xff"
    with CasfsServer(tmp_path / "store") as server:
        channel = connect(server).channel
        for method in (
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
            "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        ):
            call = channel.unary_unary(method)
            assert rpc_code(lambda: call(garbage, timeout=30)) == Code.INVALID_ARGUMENT  # noqa: B023
        read = channel.unary_stream("/google.bytestream.ByteStream/Read")
        assert rpc_code(lambda: list(read(garbage, timeout=30))) == Code.INVALID_ARGUMENT
        write = channel.stream_unary("/google.bytestream.ByteStream/Write")
        assert rpc_code(lambda: write(iter([garbage]), timeout=30)) == Code.INVALID_ARGUMENT
        wait_until(lambda: server.log.read_text().count("does not decode") == 4, "the log")
        assert "Traceback" not in server.log.read_text()


# -- 4: partial uploads -----------------------------------------------------------------------


def upload_name(digest: Digest) -> str:
    return f"main/uploads/{uuid.uuid4()}/blobs/{digest}"


def part_bytes(server: CasfsServer) -> int:
    return sum(p.stat().st_size for p in (server.store / "uploads").glob("*.part"))


def query(stubs: Stubs, name: str) -> tuple[Code, int, bool]:
    request = bytestream_pb2.QueryWriteStatusRequest(resource_name=name)
    try:
        response = stubs.bytestream.QueryWriteStatus(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), -1, False  # type: ignore[attr-defined]
    return Code.OK, response.committed_size, response.complete


def test_partial_uploads_are_bounded_in_bytes_and_count(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    blobs = [os.urandom(600 << 10) for _ in range(4)]
    digests = [Digest.of_bytes(b) for b in blobs]
    args = ("--max-size", "1M", "--max-partial-uploads", "3")
    with CasfsServer(tmp_path / "store", *args) as server:
        stubs = connect(server)

        def partial(index: int, count: int) -> Code:
            name = upload_name(digests[index])
            data = blobs[index][:count]
            return write_code(stubs, bytestream_pb2.WriteRequest(resource_name=name, data=data))

        assert partial(0, 400 << 10) == Code.OK
        assert partial(1, 500 << 10) == Code.OK
        assert partial(2, 200 << 10) == Code.RESOURCE_EXHAUSTED  # past --max-size in all
        assert part_bytes(server) == 900 << 10
        assert partial(2, 10 << 10) == Code.OK
        assert partial(3, 10 << 10) == Code.RESOURCE_EXHAUSTED  # a fourth partial upload
        assert parts(server) == 3
        finished = bytestream_pb2.WriteRequest(
            resource_name=upload_name(digests[1]), data=blobs[1], finish_write=True
        )
        assert write_code(stubs, finished) == Code.OK  # takes over the partial one, ends it
        assert parts(server) == 2
        assert partial(3, 10 << 10) == Code.OK


def test_abandoned_partial_uploads_are_reclaimed(tmp_path: Path, connect: type[Stubs]) -> None:
    first, second = os.urandom(1000), os.urandom(1000)
    args = ("--max-partial-uploads", "1", "--abandon-after", "1")
    with CasfsServer(tmp_path / "store", *args) as server:
        stubs = connect(server)
        name = upload_name(Digest.of_bytes(first))
        write = bytestream_pb2.WriteRequest(resource_name=name, data=first[:500])
        assert write_code(stubs, write) == Code.OK
        [part] = (server.store / "uploads").glob("*.part")
        wait_until(lambda: time.time() - part.stat().st_mtime > 1.5, "the upload to age")
        other = bytestream_pb2.WriteRequest(
            resource_name=upload_name(Digest.of_bytes(second)), data=second[:500]
        )
        assert write_code(stubs, other) == Code.OK  # the abandoned one made room
        assert query(stubs, name)[0] == Code.NOT_FOUND
        assert parts(server) == 1


def test_a_new_upload_of_a_blob_resumes_from_an_abandoned_one(
    tmp_path: Path, connect: type[Stubs]
) -> None:
    data = os.urandom(3 << 20)
    digest = Digest.of_bytes(data)
    with CasfsServer(tmp_path / "store") as server:
        stubs = connect(server)
        crashed = upload_name(digest)
        write = bytestream_pb2.WriteRequest(resource_name=crashed, data=data[: 2 << 20])
        assert write_code(stubs, write) == Code.OK
        server.kill()  # the client crashes and so does the server: only the disk remembers
        server.start()
        stubs = connect(server)
        retry = upload_name(digest)
        assert query(stubs, retry) == (Code.OK, 2 << 20, False)
        rest = bytestream_pb2.WriteRequest(
            resource_name=retry, write_offset=2 << 20, data=data[2 << 20 :], finish_write=True
        )
        assert write_code(stubs, rest) == Code.OK
        assert query(stubs, crashed) == (Code.OK, len(data), True)
        assert parts(server) == 0
        with open(server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash, "rb") as f:
            assert f.read() == data
