"""tvix castore's BlobService and DirectoryService on a real ``casfs serve`` (127.0.0.1),
crossing to and from its REAPI services over the same store."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import blake3
import grpc
import pytest
import trio

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs._proto.tvix import castore_pb2, rpc_directory_pb2, rpc_directory_pb2_grpc
from casfs._proto.tvix import rpc_blobstore_pb2 as blob_pb2
from casfs._proto.tvix import rpc_blobstore_pb2_grpc as blob_grpc
from casfs.cas import errors
from casfs.cas.client import CasClient
from casfs.cas.tvix import ChunkInfo, TvixClient
from casfs.digest import Digest, DigestFunction
from casfs.tvix_directory import digest_of
from tests.conftest import remote
from tests.mounts import peak_rss_bytes
from tests.servers import CasfsServer
from tests.test_client_server import write_file
from tests.test_observability import Scrape, metrics_url

T = TypeVar("T")
MIB = 1 << 20
BLAKE3 = DigestFunction.BLAKE3


def run(endpoint: str, fn: Callable[[TvixClient, CasClient], Awaitable[T]], **config: Any) -> T:
    """``fn`` with a tvix client and a REAPI client (instance 'main') of one server."""

    async def main() -> T:
        async with (
            TvixClient(remote(endpoint, **config)) as tvix,
            CasClient(remote(endpoint, **config)) as cas,
        ):
            return await fn(tvix, cas)

    return trio.run(main)


def blake3_file(path: Path) -> Digest:
    hasher = blake3.blake3()
    with open(path, "rb") as file:
        while chunk := file.read(8 * MIB):
            hasher.update(chunk)
    return Digest(hasher.hexdigest(), path.stat().st_size, BLAKE3)


async def save(chunks: Any, out: Path) -> None:
    with open(out, "wb") as file:
        async for chunk in chunks:
            file.write(chunk)


def same_bytes(a: Path, b: Path) -> bool:
    return blake3_file(a) == blake3_file(b)


@pytest.fixture
def channel(server: CasfsServer) -> Iterator[grpc.Channel]:
    """A raw channel, for requests the clients refuse to send."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[attr-defined, no-any-return]


# -- blobs across protocols ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MIB + 1, 9 * MIB], ids=lambda s: f"{s}B")
def test_tvix_put_is_read_by_bytestream_and_batch(
    server: CasfsServer, tmp_path: Path, size: int
) -> None:
    source = write_file(tmp_path / "in", size)

    async def scenario(tvix: TvixClient, cas: CasClient) -> tuple[Digest, bytes | None]:
        digest = await tvix.put(source)
        await save(cas.stream(digest), tmp_path / "bytestream")
        batch = (await cas.batch_read([digest]))[digest] if size <= MIB else None
        return digest, batch

    digest, batch = run(server.endpoint, scenario)
    assert digest == blake3_file(source)
    assert (tmp_path / "bytestream").read_bytes() == source.read_bytes()
    if batch is not None:
        assert batch == source.read_bytes()
    if size:  # the store file REAPI serves: blobs/blake3/<hash>/<size>
        stored = server.store / "cas" / "blake3" / digest.hash[:2] / digest.hash
        assert stored.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("size", [1, 5 * MIB + 3], ids=lambda s: f"{s}B")
def test_bytestream_write_is_read_by_tvix(server: CasfsServer, tmp_path: Path, size: int) -> None:
    source = write_file(tmp_path / "in", size)

    async def scenario(tvix: TvixClient, cas: CasClient) -> tuple[list[ChunkInfo], ...]:
        digest = await cas.upload_file(source, BLAKE3)
        await save(tvix.stream(digest), tmp_path / "out")
        return await tvix.stat(digest), await tvix.stat(digest, chunks=True)

    plain, chunked = run(server.endpoint, scenario)
    assert (tmp_path / "out").read_bytes() == source.read_bytes()
    assert plain == []
    assert chunked == [ChunkInfo(blake3_file(source))]  # kept whole: one chunk, itself


def test_put_of_a_stored_blob_answers_its_digest(server: CasfsServer, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 3 * MIB)

    async def scenario(tvix: TvixClient, cas: CasClient) -> tuple[Digest, Digest]:
        return await cas.upload_file(source, BLAKE3), await tvix.put(source)

    via_reapi, via_tvix = run(server.endpoint, scenario)
    assert via_reapi == via_tvix == blake3_file(source)


@pytest.mark.slow
def test_large_blob_streams_in_bounded_server_memory(server: CasfsServer, tmp_path: Path) -> None:
    """512 MiB through tvix Put and back through tvix Read: the server never holds it
    (twice the bound below, so a server that held it whole would fail)."""
    assert server.process is not None
    source = write_file(tmp_path / "in", 512 * MIB)

    async def scenario(tvix: TvixClient, cas: CasClient) -> Digest:
        digest = await tvix.put(source)
        await save(tvix.stream(digest), tmp_path / "out")
        return digest

    digest = run(server.endpoint, scenario)
    assert digest == blake3_file(source)
    assert same_bytes(source, tmp_path / "out")
    assert peak_rss_bytes(server.process.pid) < 250 * MIB  # about 85 MiB measured


# -- blobs: bad input ---------------------------------------------------------------------


def test_missing_blob_is_not_found(server: CasfsServer, tmp_path: Path) -> None:
    absent = Digest.of_bytes(b"never stored", BLAKE3)

    async def stat(tvix: TvixClient, cas: CasClient) -> object:
        return await tvix.stat(absent, chunks=True)

    async def read(tvix: TvixClient, cas: CasClient) -> object:
        return await save(tvix.stream(absent), tmp_path / "out")

    for scenario in (stat, read):
        with pytest.raises(errors.NotFound):
            run(server.endpoint, scenario)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_malformed_digest_is_invalid_argument(channel: grpc.Channel, length: int) -> None:
    raw = b"\x01" * length
    blobs = blob_grpc.BlobServiceStub(channel)
    directories = rpc_directory_pb2_grpc.DirectoryServiceStub(channel)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: blobs.Stat(blob_pb2.StatBlobRequest(digest=raw))) == invalid
    assert code_of(lambda: list(blobs.Read(blob_pb2.ReadBlobRequest(digest=raw)))) == invalid
    get = rpc_directory_pb2.GetDirectoryRequest(digest=raw, recursive=True)
    assert code_of(lambda: list(directories.Get(get))) == invalid


def _blob_files(store: Path) -> list[Path]:
    return [p for p in (store / "cas").rglob("*") if p.is_file()]


def _temp_files(store: Path) -> list[Path]:
    return [p for p in (store / "tmp").rglob("*") if p.is_file()]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_put_cut_off_leaves_no_temporary_file_and_nothing_wrong(
    server: CasfsServer, channel: grpc.Channel
) -> None:
    """A Put whose client goes away mid-stream leaves no temporary file. grpcio may end a
    cancelled call's request stream as if the client had closed it, so the server can
    see what looks like a finished Put of the bytes it got: then those bytes, and only
    they, are stored under their own digest (a valid blob nobody will name)."""
    piece = os.urandom(MIB)
    hold = threading.Event()

    def chunks() -> Iterator[blob_pb2.BlobChunk]:
        for _ in range(4):
            yield blob_pb2.BlobChunk(data=piece)
        hold.wait(60)  # the stream stays open, unfinished, until the test cuts it off

    future = blob_grpc.BlobServiceStub(channel).Put.future(chunks())
    _wait_for(
        lambda: sum(p.stat().st_size for p in _temp_files(server.store)) >= 4 * MIB,
        "the server has received the 4 MiB sent",
    )
    future.cancel()
    hold.set()
    _wait_for(lambda: not _temp_files(server.store), "the server drops the partial upload")
    partial = blake3.blake3(piece * 4).hexdigest()
    stored = _blob_files(server.store)
    assert [p.name for p in stored] in ([], [partial])
    for path in stored:
        assert blake3.blake3(path.read_bytes()).hexdigest() == partial


def test_put_over_the_stores_max_size_is_refused(tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 3 * MIB)
    with CasfsServer(tmp_path / "store", "--max-size", "2M") as small:
        with pytest.raises(errors.ResourceExhausted):
            run(small.endpoint, lambda tvix, cas: tvix.put(source))
        assert _blob_files(small.store) == []
        _wait_for(lambda: not _temp_files(small.store), "the refused upload is dropped")


def test_read_only_token_may_read_but_not_put(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("writer-s3cret\nreader-s3cret read-only\n")
    writer, reader = tmp_path / "writer.token", tmp_path / "reader.token"
    writer.write_text("writer-s3cret\n")
    reader.write_text("reader-s3cret\n")
    source = write_file(tmp_path / "in", 1000)
    with CasfsServer(tmp_path / "store", "--token-file", str(tmp_path / "tokens")) as srv:
        digest = run(srv.endpoint, lambda tvix, cas: tvix.put(source), token_file=writer)

        async def read(tvix: TvixClient, cas: CasClient) -> None:
            await save(tvix.stream(digest), tmp_path / "out")

        run(srv.endpoint, read, token_file=reader)
        assert (tmp_path / "out").read_bytes() == source.read_bytes()
        directory = castore_pb2.Directory()
        for denied in (
            lambda tvix, cas: tvix.put(source),
            lambda tvix, cas: tvix.put_directories([directory]),
        ):
            with pytest.raises(errors.PermissionDenied):
                run(srv.endpoint, denied, token_file=reader)
        with pytest.raises(errors.PermissionDenied):
            run(srv.endpoint, read)  # no token at all


# -- directories --------------------------------------------------------------------------


def _tree() -> list[castore_pb2.Directory]:
    """A leaf Directory (a file, a symlink) and a root holding it twice and a file."""
    blob = blake3.blake3(b"hello").digest()
    leaf = castore_pb2.Directory(
        files=[castore_pb2.FileNode(name=b"hello.txt", digest=blob, size=5, executable=True)],
        symlinks=[castore_pb2.SymlinkNode(name=b"link", target=b"hello.txt")],
    )
    node = castore_pb2.DirectoryNode(digest=digest_of(leaf), size=2)
    root = castore_pb2.Directory(
        directories=[
            castore_pb2.DirectoryNode(name=b"a", digest=node.digest, size=node.size),
            castore_pb2.DirectoryNode(name=b"b", digest=node.digest, size=node.size),
        ],
        files=[castore_pb2.FileNode(name=b"c", digest=blob, size=5)],
    )
    return [leaf, root]


def test_directories_round_trip(server: CasfsServer) -> None:
    leaf, root = _tree()

    async def scenario(tvix: TvixClient, cas: CasClient) -> tuple[bytes, list[Any], list[Any]]:
        root_digest = await tvix.put_directories([leaf, root])
        whole = [d async for d in tvix.get_directories(root_digest, recursive=True)]
        alone = [d async for d in tvix.get_directories(root_digest)]
        return root_digest, whole, alone

    root_digest, whole, alone = run(server.endpoint, scenario)
    assert root_digest == digest_of(root)
    assert whole == [root, leaf]  # the shared child once, after its parent
    assert alone == [root]
    # Each Directory is a blake3 blob of the store, as REAPI clients see it.
    stored = server.store / "cas" / "blake3" / root_digest.hex()[:2] / root_digest.hex()
    assert castore_pb2.Directory.FromString(stored.read_bytes()) == root


def test_missing_directory_is_not_found(channel: grpc.Channel) -> None:
    get = rpc_directory_pb2.GetDirectoryRequest(digest=bytes(32))
    stub = rpc_directory_pb2_grpc.DirectoryServiceStub(channel)
    assert code_of(lambda: list(stub.Get(get))) == grpc.StatusCode.NOT_FOUND


def _file(name: bytes) -> castore_pb2.FileNode:
    return castore_pb2.FileNode(name=name, digest=bytes(32), size=1)


HOSTILE = {
    "dot-dot": castore_pb2.Directory(files=[_file(b"..")]),
    "dot": castore_pb2.Directory(files=[_file(b".")]),
    "slash": castore_pb2.Directory(files=[_file(b"a/b")]),
    "absolute": castore_pb2.Directory(files=[_file(b"/etc")]),
    "empty": castore_pb2.Directory(files=[_file(b"")]),
    "nul": castore_pb2.Directory(files=[_file(b"a\0b")]),
    "unsorted": castore_pb2.Directory(files=[_file(b"b"), _file(b"a")]),
    "repeated": castore_pb2.Directory(files=[_file(b"a"), _file(b"a")]),
    "across-lists": castore_pb2.Directory(
        files=[_file(b"a")], symlinks=[castore_pb2.SymlinkNode(name=b"a", target=b"x")]
    ),
    "short-digest": castore_pb2.Directory(
        files=[castore_pb2.FileNode(name=b"a", digest=bytes(31))]
    ),
    "empty-target": castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"a")]),
    "unknown-child": castore_pb2.Directory(
        directories=[castore_pb2.DirectoryNode(name=b"d", digest=bytes(32), size=0)]
    ),
    "wrong-child-size": castore_pb2.Directory(
        directories=[
            castore_pb2.DirectoryNode(
                name=b"d", digest=digest_of(castore_pb2.Directory(files=[_file(b"x")])), size=7
            )
        ]
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_directory_is_refused_and_not_stored(
    server: CasfsServer, channel: grpc.Channel, name: str
) -> None:
    hostile = HOSTILE[name]
    stub = rpc_directory_pb2_grpc.DirectoryServiceStub(channel)
    # the wrong-size case sends the real child first, so only the size is wrong
    sent = [castore_pb2.Directory(files=[_file(b"x")]), hostile]
    assert code_of(lambda: stub.Put(iter(sent))) == grpc.StatusCode.INVALID_ARGUMENT
    get = rpc_directory_pb2.GetDirectoryRequest(digest=digest_of(hostile))
    assert code_of(lambda: list(stub.Get(get))) == grpc.StatusCode.NOT_FOUND
    missing = re_pb2.FindMissingBlobsRequest(
        instance_name="main",
        blob_digests=[Digest.of_bytes(hostile.SerializeToString(), BLAKE3).to_proto()],
        digest_function=BLAKE3.value,
    )
    cas = re_grpc.ContentAddressableStorageStub(channel)
    assert len(cas.FindMissingBlobs(missing).missing_blob_digests) == 1


def test_client_refuses_to_send_a_hostile_directory(server: CasfsServer) -> None:
    with pytest.raises(errors.InvalidArgument):
        run(server.endpoint, lambda tvix, cas: tvix.put_directories([HOSTILE["dot-dot"]]))


# -- what a client checks, and what the server counts -------------------------------------


def _stored(store: Path, digest: Digest | bytes) -> Path:
    hex_hash = digest.hex() if isinstance(digest, bytes) else digest.hash
    return store / "cas" / "blake3" / hex_hash[:2] / hex_hash


def test_client_refuses_wrong_bytes_from_the_server(server: CasfsServer, tmp_path: Path) -> None:
    """A blob that rotted on the server's disk (same size, other bytes) is served as it is;
    the client withholds the end of it and raises DataLoss."""
    source = write_file(tmp_path / "in", 3 * MIB)
    digest = run(server.endpoint, lambda tvix, cas: tvix.put(source))
    stored = _stored(server.store, digest)
    stored.write_bytes(os.urandom(digest.size))
    got: list[int] = []

    async def read(tvix: TvixClient, cas: CasClient) -> None:
        async for chunk in tvix.stream(digest):
            got.append(len(chunk))

    with pytest.raises(errors.DataLoss):
        run(server.endpoint, read)
    assert sum(got) < digest.size  # never the whole (wrong) blob


def test_client_refuses_a_directory_that_is_not_the_one_asked_for(server: CasfsServer) -> None:
    """The child a root names is replaced on the server's disk by another valid Directory:
    the root arrives, the stranger after it is refused."""
    leaf, root = _tree()
    root_digest = run(server.endpoint, lambda tvix, cas: tvix.put_directories([leaf, root]))
    stranger = castore_pb2.Directory(files=[_file(b"stranger")])
    _stored(server.store, digest_of(leaf)).write_bytes(stranger.SerializeToString())

    async def get(tvix: TvixClient, cas: CasClient) -> list[Any]:
        return [d async for d in tvix.get_directories(root_digest, recursive=True)]

    with pytest.raises(errors.DataLoss):
        run(server.endpoint, get)


def test_tvix_calls_are_counted_in_the_servers_metrics(tmp_path: Path) -> None:
    source = write_file(tmp_path / "in", 1000)
    absent = Digest.of_bytes(b"absent", BLAKE3)
    with CasfsServer(tmp_path / "store", "--metrics", "0") as srv:

        async def scenario(tvix: TvixClient, cas: CasClient) -> None:
            digest = await tvix.put(source)
            await save(tvix.stream(digest), tmp_path / "out")
            with pytest.raises(errors.NotFound):
                await tvix.stat(absent)

        run(srv.endpoint, scenario)
        scrape = Scrape.of(metrics_url(srv.log.read_text()))
    service = "tvix.castore.v1.BlobService"
    for method, code in [("Put", "OK"), ("Read", "OK"), ("Stat", "NOT_FOUND")]:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        assert scrape.value("casfs_grpc_server_handled_total", **labels) == 1, method


def test_directory_not_below_the_root_is_refused(channel: grpc.Channel) -> None:
    """Upstream's rule: a Put is one tree, every Directory in it below the last one."""
    leaf, root = _tree()
    stray = castore_pb2.Directory(files=[_file(b"stray")])
    stub = rpc_directory_pb2_grpc.DirectoryServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Put(iter([leaf, stray, root]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert digest_of(stray).hex() in caught.value.details()  # type: ignore[attr-defined]
    assert stub.Put(iter([leaf, root])).root_digest == digest_of(root)


def test_an_idle_put_is_ended_and_counts_against_max_streams(tmp_path: Path) -> None:
    """tvix streams are held like ByteStream's: a Put that sends one chunk and stalls
    takes one of the --max-streams slots (a ByteStream Read past them is refused), and is
    ended after --stream-idle-timeout, storing nothing; its slot is given back."""
    hold = threading.Event()

    def chunks() -> Iterator[blob_pb2.BlobChunk]:
        yield blob_pb2.BlobChunk(data=b"one chunk, then nothing")
        hold.wait(60)

    args = ("--max-streams", "1", "--stream-idle-timeout", "2")
    with (
        CasfsServer(tmp_path / "store", *args) as small,
        grpc.insecure_channel(f"127.0.0.1:{small.port}") as raw,
    ):
        put = blob_grpc.BlobServiceStub(raw).Put.future(chunks(), timeout=120)
        _wait_for(lambda: bool(_temp_files(small.store)), "the server holds the Put")
        read = bytestream_pb2.ReadRequest(resource_name=f"main/blobs/{Digest.empty()}")
        reads = bytestream_pb2_grpc.ByteStreamStub(raw)
        assert code_of(lambda: list(reads.Read(read, timeout=30))) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        try:
            error = put.exception(timeout=60)  # ended by the server, not by the test
        finally:
            hold.set()
        assert isinstance(error, grpc.Call)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        _wait_for(lambda: not _temp_files(small.store), "the ended Put is dropped")
        assert _blob_files(small.store) == []
        assert list(reads.Read(read, timeout=30)) == []  # the slot is free again
