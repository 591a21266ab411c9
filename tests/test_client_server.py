"""The async client against a real ``casfs serve`` over gRPC on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import trio

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.cas import errors
from casfs.cas.client import CasClient
from casfs.config import RetryPolicy
from casfs.digest import Digest, DigestFunction
from casfs.resource import BlobName
from tests.conftest import remote
from tests.servers import CasfsServer

T = TypeVar("T")
MIB = 1 << 20


def run_client(endpoint: str, fn: Callable[[CasClient], Awaitable[T]], **config: object) -> T:
    async def main() -> T:
        async with CasClient(remote(endpoint, **config)) as client:
            return await fn(client)

    return trio.run(main)


def write_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes, written in 8 MiB pieces."""
    with open(path, "wb") as file:
        left = size
        while left:
            piece = min(left, 8 * MIB)
            file.write(os.urandom(piece))
            left -= piece
    return path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


async def download(client: CasClient, digest: Digest, out: Path) -> None:
    with open(out, "wb") as file:
        async for chunk in client.stream(digest):
            file.write(chunk)


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 64 * MIB], ids=lambda s: f"{s}B")
def test_round_trip(server: CasfsServer, tmp_path: Path, size: int) -> None:
    source = write_file(tmp_path / "in", size)

    async def scenario(client: CasClient) -> Digest:
        digest = await client.upload_file(source)
        assert not await client.find_missing([digest])
        await download(client, digest, tmp_path / "out")
        return digest

    digest = run_client(server.endpoint, scenario)
    assert digest == Digest(sha256_file(source), size)
    assert sha256_file(tmp_path / "out") == digest.hash
    stored = server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash
    assert size == 0 or stored.read_bytes() == source.read_bytes()


def test_ranged_reads_are_clamped(server: CasfsServer, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 17)
    source = tmp_path / "in"
    source.write_bytes(data)

    async def scenario(client: CasClient) -> list[bytes]:
        digest = await client.upload_file(source)
        return [
            await client.read_range(digest, 0, 10),
            await client.read_range(digest, MIB - 3, 6),
            await client.read_range(digest, len(data) - 5, MIB),  # past the end: clamped
            await client.read_range(digest, len(data), 10),  # at the end: nothing
            await client.read_range(digest, len(data) + 100, 10),  # beyond: nothing
        ]

    first, middle, tail, at_end, beyond = run_client(server.endpoint, scenario)
    assert first == data[:10]
    assert middle == data[MIB - 3 : MIB + 3]
    assert tail == data[-5:]
    assert at_end == beyond == b""


def test_blake3_and_empty_instance(server: CasfsServer, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 5 * MIB + 3)

    async def scenario(client: CasClient) -> Digest:
        digest = await client.upload_file(source, DigestFunction.BLAKE3)
        await download(client, digest, tmp_path / "out")
        return digest

    digest = run_client(server.endpoint, scenario, instance="")
    assert digest.function is DigestFunction.BLAKE3
    assert (tmp_path / "out").read_bytes() == source.read_bytes()
    # 'main' and '' share the default store: the blob is there under the other name too.
    assert run_client(server.endpoint, lambda c: c.contains(digest))


def test_batches_many_small_blobs(server: CasfsServer) -> None:
    blobs = [os.urandom(100 * 1024) for _ in range(100)]  # 10 MiB: several batches
    digests = [Digest.of_bytes(b) for b in blobs]

    async def scenario(client: CasClient) -> dict[Digest, bytes]:
        assert await client.find_missing(digests) == set(digests)
        await client.batch_update(list(zip(digests, blobs, strict=True)))
        assert not await client.find_missing(digests)
        return await client.batch_read(list(reversed(digests)))

    got = run_client(server.endpoint, scenario)
    assert got == dict(zip(digests, blobs, strict=True))


def test_find_missing_in_chunks(server: CasfsServer) -> None:
    digests = [Digest.of_bytes(str(i).encode()) for i in range(25_000)]
    present = digests[12_345]

    async def scenario(client: CasClient) -> set[Digest]:
        await client.batch_update([(present, b"12345")])
        return await client.find_missing([*digests, Digest.empty()])

    assert run_client(server.endpoint, scenario) == set(digests) - {present}


def test_zstd_on_the_wire(server: CasfsServer, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"casfs compresses well " * 500_000)  # 11 MB

    async def scenario(client: CasClient) -> Digest:
        digest = await client.upload_file(source)
        await download(client, digest, tmp_path / "out")
        return digest

    digest = run_client(server.endpoint, scenario, compression=True)
    assert (tmp_path / "out").read_bytes() == source.read_bytes()
    stored = server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash
    assert stored.read_bytes() == source.read_bytes()  # stored uncompressed, verified


def test_missing_blob_is_not_found(server: CasfsServer) -> None:
    missing = Digest.of_bytes(b"never uploaded")
    with pytest.raises(errors.NotFound):
        run_client(server.endpoint, lambda c: c.read_range(missing, 0, 10))
    with pytest.raises(errors.NotFound):
        run_client(server.endpoint, lambda c: c.batch_read([missing]))


def test_write_with_wrong_content_is_refused(server: CasfsServer, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 2 * MIB)
    liar = Digest(hashlib.sha256(b"other").hexdigest(), 2 * MIB)
    with pytest.raises(errors.DataLoss):
        run_client(server.endpoint, lambda c: c.write(liar, source))
    assert run_client(server.endpoint, lambda c: c.find_missing([liar])) == {liar}
    assert not list((server.store / "cas" / "sha256").glob("*/*"))


def test_full_store_is_resource_exhausted(tmp_path: Path) -> None:
    with CasfsServer(tmp_path / "store", "--max-size", "3M") as small:
        write_file(tmp_path / "a", 2 * MIB)
        write_file(tmp_path / "b", 2 * MIB)
        run_client(small.endpoint, lambda c: c.upload_file(tmp_path / "a"))
        with pytest.raises(errors.ResourceExhausted) as caught:
            run_client(small.endpoint, lambda c: c.upload_file(tmp_path / "b"))
        assert caught.value.errno == 28  # ENOSPC in a mount


def test_eviction_keeps_the_recently_used(tmp_path: Path) -> None:
    paths = [write_file(tmp_path / f"f{i}", MIB) for i in range(3)]
    with CasfsServer(tmp_path / "store", "--max-size", "2.5M", "--evict") as small:

        async def scenario(client: CasClient) -> set[Digest]:
            a = await client.upload_file(paths[0])
            b = await client.upload_file(paths[1])
            await client.read_range(a, 0, 1)  # a is now more recent than b
            c = await client.upload_file(paths[2])
            assert [a, b, c]
            return await client.find_missing([a, b, c])

        missing = run_client(small.endpoint, scenario)
    assert [d.hash for d in missing] == [sha256_file(paths[1])]


def test_resume_after_server_killed_mid_upload(tmp_path: Path) -> None:
    size = 384 * MIB
    source = write_file(tmp_path / "big", size)
    digest = Digest(sha256_file(source), size)
    with CasfsServer(tmp_path / "store") as server:
        with server.killed_mid_upload(after=32 * MIB) as killed_at, trio_log_capture() as log_lines:
            # The restart of a store holding a 384 MiB partial upload can take several
            # seconds on a loaded machine: a minute of attempts, not the suite's dozen.
            patient = RetryPolicy(attempts=60, initial_backoff=0.1, max_backoff=1.0)
            run_client(server.endpoint, lambda c: c.write(digest, source), retry=patient)
        assert killed_at and killed_at[0] < size, "the upload finished before the kill"
        resumed = [line for line in log_lines if "resuming at offset" in line]
        assert resumed, log_lines
        assert int(resumed[0].rsplit(" ", 1)[1]) > 0
        run_client(server.endpoint, lambda c: download(c, digest, tmp_path / "out"))
    assert sha256_file(tmp_path / "out") == digest.hash


class trio_log_capture:
    """Collect the ``casfs.cas`` log lines emitted inside the block."""

    def __enter__(self) -> list[str]:
        import logging

        self.lines: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())  # type: ignore[method-assign]
        self.logger = logging.getLogger("casfs.cas")
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self.lines

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_server_down_then_back(tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", MIB)
    with CasfsServer(tmp_path / "store") as server:
        digest = run_client(server.endpoint, lambda c: c.upload_file(source))
        server.kill()
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            run_client(server.endpoint, lambda c: c.read_range(digest, 0, 10))
        assert time.monotonic() - started < 30  # bounded retries, then a clear error
        server.start()
        assert (
            run_client(server.endpoint, lambda c: c.read_range(digest, 0, 10))
            == (source.read_bytes()[:10])
        )


def test_cancelling_a_read_cancels_the_call(server: CasfsServer, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 64 * MIB)

    async def scenario(client: CasClient) -> tuple[int, bytes]:
        digest = await client.upload_file(source)
        received = 0
        with trio.move_on_after(0.2):
            async for chunk in client.stream(digest):
                received += len(chunk)
                await trio.sleep(0.05)  # a slow consumer
        # The client stays usable after the cancellation.
        return received, await client.read_range(digest, 0, 4)

    received, head = run_client(server.endpoint, scenario)
    assert 0 < received < 64 * MIB
    assert head == source.read_bytes()[:4]


def test_unix_socket_endpoint(tmp_path: Path) -> None:
    sock = tmp_path / "cas.sock"
    with CasfsServer(tmp_path / "store", listen=f"unix:{sock}"):
        digest = run_client(f"unix:{sock}", lambda c: c.upload_bytes(b"over a socket"))
        assert run_client(f"unix://{sock}", lambda c: c.read_blob(digest)) == b"over a socket"


# -- status codes, seen by a raw gRPC client ------------------------------------------------


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__"):
            list(result)  # type: ignore[call-overload]
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


def test_status_codes(server: CasfsServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)
    cas = re_grpc.ContentAddressableStorageStub(channel)
    data = b"0123456789"
    digest = Digest.of_bytes(data)
    cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            instance_name="main",
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest.to_proto(), data=data)],
        )
    )
    name = BlobName("main", digest).read_name()

    def read(resource: str, offset: int = 0, limit: int = 0) -> object:
        request = bytestream_pb2.ReadRequest(
            resource_name=resource, read_offset=offset, read_limit=limit
        )
        return bytestream.Read(request)

    missing = BlobName("main", Digest.of_bytes(b"missing")).read_name()
    assert _code(lambda: read(missing)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: read("main/blobs/nothex/10")) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: read(name, limit=-1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: read(name, offset=11)) == grpc.StatusCode.OUT_OF_RANGE
    assert _code(lambda: read(name.replace("main/", "other/"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert b"".join(r.data for r in read(name, offset=10)) == b""  # type: ignore[attr-defined]
    assert b"".join(r.data for r in read(name, 3, 100)) == data[3:]  # type: ignore[attr-defined]

    blob = os.urandom(1000)
    upload = BlobName("main", Digest.of_bytes(blob), upload_id="u-1").write_name()

    def write(*pieces: tuple[int, bytes, bool]) -> bytestream_pb2.WriteResponse:
        requests = [
            bytestream_pb2.WriteRequest(
                resource_name=upload, write_offset=o, data=d, finish_write=f
            )
            for o, d, f in pieces
        ]
        return bytestream.Write(iter(requests))

    # A stream that stops without finish_write keeps its bytes; a gap is refused.
    assert write((0, blob[:400], False)).committed_size == 400
    status = bytestream.QueryWriteStatus(
        bytestream_pb2.QueryWriteStatusRequest(resource_name=upload)
    )
    assert (status.committed_size, status.complete) == (400, False)
    assert _code(lambda: write((500, blob[500:], True))) == grpc.StatusCode.FAILED_PRECONDITION
    assert write((400, blob[400:], True)).committed_size == 1000
    # Writing a blob that exists ends at once with its full size.
    again = BlobName("main", Digest.of_bytes(blob), upload_id="u-2").write_name()
    early = bytestream.Write(
        iter([bytestream_pb2.WriteRequest(resource_name=again, data=blob[:10])])
    )
    assert early.committed_size == 1000

    wrong = BlobName("main", Digest(hashlib.sha256(b"x").hexdigest(), 1000), upload_id="u-3")
    upload = wrong.write_name()
    assert _code(lambda: write((0, blob, True))) == grpc.StatusCode.DATA_LOSS
    assert _code(lambda: write((0, blob + b"!", True))) == grpc.StatusCode.INVALID_ARGUMENT

    bad = cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            instance_name="main",
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=digest.to_proto(), data=b"nope")
            ],
        )
    )
    assert bad.responses[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    channel.close()


def test_action_cache_and_get_tree(server: CasfsServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    cas = re_grpc.ContentAddressableStorageStub(channel)
    actions = re_grpc.ActionCacheStub(channel)

    async def upload(client: CasClient) -> tuple[Digest, Digest, Digest]:
        output = await client.upload_bytes(b"compiled")
        leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="out.o", digest=output.to_proto())])
        leaf_digest = await client.upload_bytes(leaf.SerializeToString())
        root = re_pb2.Directory(
            directories=[
                re_pb2.DirectoryNode(name=f"d{i}", digest=leaf_digest.to_proto()) for i in range(3)
            ]
        )
        return output, leaf_digest, await client.upload_bytes(root.SerializeToString())

    output, _leaf, root = run_client(server.endpoint, upload)
    pages = list(
        cas.GetTree(
            re_pb2.GetTreeRequest(instance_name="main", root_digest=root.to_proto(), page_size=1)
        )
    )
    directories = [d for page in pages for d in page.directories]
    assert len(pages) == 2 and len(directories) == 2  # the root, then the shared leaf once
    assert directories[1].files[0].name == "out.o"

    action = Digest.of_bytes(b"an action")
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="out.o", digest=output.to_proto())], exit_code=0
    )
    with pytest.raises(grpc.RpcError) as caught:
        actions.GetActionResult(
            re_pb2.GetActionResultRequest(instance_name="main", action_digest=action.to_proto())
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    actions.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name="main", action_digest=action.to_proto(), action_result=result
        )
    )
    got = actions.GetActionResult(
        re_pb2.GetActionResultRequest(instance_name="main", action_digest=action.to_proto())
    )
    assert got == result
    channel.close()


# -- hostile and unusual requests -------------------------------------------------------------


def test_compressed_reads_are_standard_zstd_and_raw_deflate(server: CasfsServer) -> None:
    import zlib

    import zstandard

    data = b"standard formats only " * 10_000
    digest = run_client(server.endpoint, lambda c: c.upload_bytes(data))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def fetch(compressor: str) -> bytes:
        name = f"main/compressed-blobs/{compressor}/{digest}"
        request = bytestream_pb2.ReadRequest(resource_name=name)
        return b"".join(r.data for r in bytestream.Read(request))

    assert zstandard.ZstdDecompressor().decompressobj().decompress(fetch("zstd")) == data
    assert zlib.decompress(fetch("deflate"), wbits=-15) == data  # raw RFC 1951
    channel.close()


def test_a_small_batch_cannot_unpack_into_a_huge_blob(server: CasfsServer) -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(bytes(64 * MIB))
    digest = Digest(hashlib.sha256(bytes(64 * MIB)).hexdigest(), 64 * MIB)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    cas = re_grpc.ContentAddressableStorageStub(channel)
    request = re_pb2.BatchUpdateBlobsRequest(
        instance_name="main",
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(
                digest=digest.to_proto(), data=bomb, compressor=re_pb2.Compressor.ZSTD
            )
        ],
    )
    assert _code(lambda: cas.BatchUpdateBlobs(request)) == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_a_corrupted_blob_is_detected_when_streamed(server: CasfsServer, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 3 * MIB)
    digest = run_client(server.endpoint, lambda c: c.upload_file(source))
    stored = server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash
    stored.chmod(0o600)
    with open(stored, "r+b") as file:  # bit rot on the server's disk
        file.seek(MIB)
        file.write(b"\0rot")
    with pytest.raises(errors.DataLoss):
        run_client(server.endpoint, lambda c: download(c, digest, tmp_path / "out"))


def test_get_tree_of_a_non_directory_and_modern_action_results(server: CasfsServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    cas = re_grpc.ContentAddressableStorageStub(channel)
    actions = re_grpc.ActionCacheStub(channel)
    junk = run_client(server.endpoint, lambda c: c.upload_bytes(b"\xff\xff not a Directory"))
    request = re_pb2.GetTreeRequest(instance_name="main", root_digest=junk.to_proto())
    assert _code(lambda: cas.GetTree(request)) == grpc.StatusCode.INVALID_ARGUMENT

    # REAPI 2.3: an output directory may name only its root Directory.
    root = run_client(
        server.endpoint, lambda c: c.upload_bytes(re_pb2.Directory().SerializeToString())
    )
    result = re_pb2.ActionResult(
        output_directories=[
            re_pb2.OutputDirectory(path="out", root_directory_digest=root.to_proto())
        ]
    )
    action = Digest.of_bytes(b"modern action").to_proto()
    actions.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name="main", action_digest=action, action_result=result
        )
    )
    got = actions.GetActionResult(
        re_pb2.GetActionResultRequest(instance_name="main", action_digest=action)
    )
    assert got == result
    channel.close()


def test_a_retried_stream_after_completion_succeeds(server: CasfsServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)
    blob = os.urandom(5000)
    name = BlobName("main", Digest.of_bytes(blob), upload_id="again").write_name()
    finish = bytestream_pb2.WriteRequest(resource_name=name, data=blob, finish_write=True)
    assert bytestream.Write(iter([finish])).committed_size == 5000
    assert bytestream.Write(iter([finish])).committed_size == 5000  # a client's retry
    status = bytestream.QueryWriteStatus(bytestream_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (5000, True)
    assert not list((server.store / "uploads").glob("*.part"))
    channel.close()


def test_read_responses_are_cut_out_without_a_parse() -> None:
    from casfs.cas.client import _read_response_data

    for data in (b"", b"x", os.urandom(127), os.urandom(128), os.urandom(3 * MIB)):
        message = bytestream_pb2.ReadResponse(data=data).SerializeToString()
        assert _read_response_data(message) == data
    # A field the message may grow one day: the parser's path, same answer.
    extra = bytestream_pb2.ReadResponse(data=b"payload").SerializeToString() + b"\x58\x01"
    assert _read_response_data(extra) == b"payload"


def test_batches_of_mixed_digest_functions(server: CasfsServer) -> None:
    blobs = [os.urandom(1000 + i) for i in range(6)]
    digests = [
        Digest.of_bytes(b, DigestFunction.BLAKE3 if i % 2 else DigestFunction.SHA256)
        for i, b in enumerate(blobs)
    ]

    async def scenario(client: CasClient) -> dict[Digest, bytes]:
        await client.batch_update(list(zip(digests, blobs, strict=True)))
        assert not await client.find_missing(digests)
        return await client.batch_read(digests)

    assert run_client(server.endpoint, scenario) == dict(zip(digests, blobs, strict=True))
