"""The Remote Asset API (Fetch and Push) of a real ``casfs serve`` over gRPC on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import trio

from casfs._proto import remote_asset_pb2 as ra_pb2
from casfs._proto import remote_asset_pb2_grpc as ra_grpc
from casfs.assetnames import MAX_QUALIFIER_VALUE_BYTES, MAX_QUALIFIERS
from casfs.cas import errors
from casfs.cas.assets import AssetClient, FetchedAsset
from casfs.cas.client import CasClient
from casfs.digest import Digest
from casfs.store.assets import INDEX_NAME
from tests.conftest import remote
from tests.servers import CasfsServer

T = TypeVar("T")
URI = "https://example.com/dist/tool-1.2.tar.gz"


def run(endpoint: str, fn: Callable[[CasClient, AssetClient], Awaitable[T]]) -> T:
    async def main() -> T:
        config = remote(endpoint)
        async with CasClient(config) as cas, AssetClient(config) as assets:
            return await fn(cas, assets)

    return trio.run(main)


def sri(data: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload(endpoint: str, data: bytes) -> Digest:
    async def go(cas: CasClient, _: AssetClient) -> Digest:
        return await cas.upload_bytes(data)

    return run(endpoint, go)


def push(endpoint: str, uris: list[str], digest: Digest, **kwargs: object) -> None:
    async def go(_: CasClient, assets: AssetClient) -> None:
        await assets.push_blob(uris, digest, **kwargs)  # type: ignore[arg-type]

    run(endpoint, go)


def fetch(endpoint: str, uris: list[str], qualifiers: dict[str, str] | None = None) -> FetchedAsset:
    async def go(_: CasClient, assets: AssetClient) -> FetchedAsset:
        return await assets.fetch_blob(uris, qualifiers)

    return run(endpoint, go)


@pytest.fixture
def stub(server: CasfsServer) -> Iterator[tuple[ra_grpc.FetchStub, ra_grpc.PushStub]]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ra_grpc.FetchStub(channel), ra_grpc.PushStub(channel)


def test_push_then_fetch_by_any_uri_and_qualifier_subset(server: CasfsServer) -> None:
    data = os.urandom(5000)
    digest = upload(server.endpoint, data)
    mirror = "https://mirror.example.org/tool-1.2.tar.gz"
    meta = {"content_type": "application/gzip", "graviton.namespace": '{"team": "infra"}'}
    push(server.endpoint, [URI, mirror], digest, qualifiers=meta)

    for uri in (URI, mirror):
        found = fetch(server.endpoint, [uri])
        assert (found.uri, found.digest, found.qualifiers) == (uri, digest, meta)
    assert fetch(server.endpoint, [URI], {"content_type": "application/gzip"}).digest == digest
    with pytest.raises(errors.NotFound):
        fetch(server.endpoint, [URI], {"content_type": "text/plain"})
    with pytest.raises(errors.NotFound):
        fetch(server.endpoint, ["https://example.com/other"])


def test_a_second_push_replaces_the_first(server: CasfsServer) -> None:
    first, second = upload(server.endpoint, b"one"), upload(server.endpoint, b"two")
    push(server.endpoint, [URI], first)
    push(server.endpoint, [URI], second)
    assert fetch(server.endpoint, [URI]).digest == second


def test_unsupported_qualifier_is_invalid_argument(server: CasfsServer) -> None:
    digest = upload(server.endpoint, b"data")
    push(server.endpoint, [URI], digest, qualifiers={"resource_type": "application/x-tar"})
    with pytest.raises(errors.InvalidArgument, match=r'"vcs\.commit" not supported'):
        fetch(server.endpoint, [URI], {"vcs.commit": "abc"})
    # A header for a download from origin is accepted (this server never downloads).
    found = fetch(server.endpoint, [URI], {"http_header:Authorization": "Bearer x"})
    assert found.digest == digest


def test_checksum_sri_answers_from_the_cas_alone(server: CasfsServer) -> None:
    """The offline mirror: a blob copied into the CAS is fetched by its checksum, under any
    URI, with nothing pushed."""
    data = os.urandom(70_000)
    digest = upload(server.endpoint, data)
    found = fetch(server.endpoint, ["https://anywhere.example/x.tgz"], {"checksum.sri": sri(data)})
    assert (found.digest, found.uri) == (digest, "https://anywhere.example/x.tgz")
    empty = fetch(server.endpoint, [URI], {"checksum.sri": sri(b"")})
    assert empty.digest == Digest.empty()
    with pytest.raises(errors.NotFound):
        fetch(server.endpoint, [URI], {"checksum.sri": sri(b"never uploaded")})
    with pytest.raises(errors.InvalidArgument, match=r"checksum\.sri"):
        fetch(server.endpoint, [URI], {"checksum.sri": "sha256-not!base64"})
    with pytest.raises(errors.InvalidArgument, match=r"checksum\.sri"):
        fetch(server.endpoint, [URI], {"checksum.sri": "md5-AAAA"})


def test_push_with_a_checksum_that_is_not_the_blobs_is_refused(server: CasfsServer) -> None:
    digest = upload(server.endpoint, b"content")
    with pytest.raises(errors.InvalidArgument, match="does not match"):
        push(server.endpoint, [URI], digest, qualifiers={"checksum.sri": sri(b"other")})
    with pytest.raises(errors.NotFound):
        fetch(server.endpoint, [URI])


def test_expiry_and_oldest_content_accepted(server: CasfsServer) -> None:
    digest = upload(server.endpoint, b"short-lived")
    push(server.endpoint, [URI], digest, expire_at=time.time() - 1)
    with pytest.raises(errors.NotFound):
        fetch(server.endpoint, [URI])
    later = time.time() + 3600
    push(server.endpoint, [URI], digest, expire_at=later)
    found = fetch(server.endpoint, [URI])
    assert found.expires_at == pytest.approx(later, abs=1e-3)

    async def newer_than_now(_: CasClient, assets: AssetClient) -> FetchedAsset:
        return await assets.fetch_blob([URI], oldest=time.time() + 60)

    with pytest.raises(errors.NotFound):
        run(server.endpoint, newer_than_now)


def test_push_of_a_blob_not_in_the_cas_is_refused(server: CasfsServer) -> None:
    absent = Digest.of_bytes(b"not uploaded")
    with pytest.raises(errors.FailedPrecondition, match="upload them before pushing"):
        push(server.endpoint, [URI], absent)
    present = upload(server.endpoint, b"here")
    with pytest.raises(errors.FailedPrecondition):
        push(server.endpoint, [URI], present, references=[absent])


def test_an_evicted_blob_is_not_found(tmp_path: Path) -> None:
    """A real eviction (the store at its --max-size, least recently used first): the
    asset's name stays in the index, but Fetch never answers a digest that is gone."""
    mib = 1 << 20
    with CasfsServer(tmp_path / "store", "--max-size", str(2 * mib), "--evict") as server:
        digest = upload(server.endpoint, os.urandom(mib))
        push(server.endpoint, [URI], digest)
        assert fetch(server.endpoint, [URI]).digest == digest
        for _ in range(2):
            upload(server.endpoint, os.urandom(mib))

        async def present(cas: CasClient, _: AssetClient) -> bool:
            return await cas.contains(digest)

        assert not run(server.endpoint, present)
        with pytest.raises(errors.NotFound):
            fetch(server.endpoint, [URI])


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/../../etc/passwd",
        "https://example.com/a/%2e%2e/b",
        "https://example.com/a\x00b",
        "https://example.com/a b",
        "no-scheme/path",
        "",
        "https://example.com/" + "a" * 5000,
    ],
    ids=["dotdot", "encoded-dotdot", "nul", "space", "no-scheme", "empty", "too-long"],
)
def test_hostile_uris_are_refused_and_record_nothing(
    server: CasfsServer, stub: tuple[ra_grpc.FetchStub, ra_grpc.PushStub], uri: str
) -> None:
    digest = upload(server.endpoint, b"x")
    _, pusher = stub
    request = ra_pb2.PushBlobRequest(instance_name="main", uris=[URI, uri])
    request.blob_digest.CopyFrom(digest.to_proto())
    with pytest.raises(grpc.RpcError) as refused:
        pusher.PushBlob(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(errors.NotFound):  # the good URI of the refused push is not recorded
        fetch(server.endpoint, [URI])


@pytest.mark.parametrize(
    "qualifiers",
    [
        [("n", "v")] * 2,
        [(f"q{i}", "v") for i in range(MAX_QUALIFIERS + 1)],
        [("big", "v" * (MAX_QUALIFIER_VALUE_BYTES + 1))],
        [("", "v")],
        [("bad\nname", "v")],
    ],
    ids=["duplicate", "too-many", "too-big", "empty-name", "control-char"],
)
def test_bad_qualifiers_are_invalid_argument(
    server: CasfsServer,
    stub: tuple[ra_grpc.FetchStub, ra_grpc.PushStub],
    qualifiers: list[tuple[str, str]],
) -> None:
    digest = upload(server.endpoint, b"x")
    fetcher, pusher = stub
    pairs = [ra_pb2.Qualifier(name=n, value=v) for n, v in qualifiers]
    request = ra_pb2.PushBlobRequest(instance_name="main", uris=[URI], qualifiers=pairs)
    request.blob_digest.CopyFrom(digest.to_proto())
    for call, message in (
        (pusher.PushBlob, request),
        (fetcher.FetchBlob, ra_pb2.FetchBlobRequest(uris=[URI], qualifiers=pairs)),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(message)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_directories_and_the_index_survive_a_restart(server: CasfsServer) -> None:
    """A pushed tree and blob are in the store's index file, so a restarted server (a new
    process on the same store) answers them."""
    root = upload(server.endpoint, b"\x0a\x00")  # any bytes stand for the root Directory

    async def push_tree(_: CasClient, assets: AssetClient) -> None:
        await assets.push_directory(["git+https://example.com/repo.git"], root, {"commit": "1"})

    run(server.endpoint, push_tree)
    blob = upload(server.endpoint, b"blob")
    push(server.endpoint, [URI], blob)
    server.stop()
    server.start()

    async def fetch_tree(_: CasClient, assets: AssetClient) -> FetchedAsset:
        return await assets.fetch_directory(["git+https://example.com/repo.git"], {"commit": "1"})

    assert run(server.endpoint, fetch_tree).digest == root
    assert fetch(server.endpoint, [URI]).digest == blob
    with pytest.raises(errors.NotFound):  # a tree is not a blob
        fetch(server.endpoint, ["git+https://example.com/repo.git"], {"commit": "1"})


def test_kill_9_mid_push_leaves_all_or_nothing(server: CasfsServer) -> None:
    """SIGKILL lands inside a push's transaction: strace kills the server at its 40th
    write to the index's log, well inside a push of 20 long URIs (dozens of pages) and
    after the first few rows would have been committed if they were committed one by one.
    After a restart the index opens, the earlier push is whole and the interrupted one
    left none of its names."""
    kept = upload(server.endpoint, b"kept")
    push(server.endpoint, ["https://example.com/kept"], kept)
    lost = upload(server.endpoint, b"lost")
    assert server.process is not None
    tracer = subprocess.Popen(
        [
            "strace", "-f", "-o", os.devnull, "-p", str(server.process.pid),
            "-e", "trace=pwrite64,write",
            "-P", str(server.store / f"{INDEX_NAME}-wal"),
            "-e", "inject=pwrite64,write:signal=SIGKILL:when=40",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert tracer.stderr is not None
    assert "attached" in tracer.stderr.readline()
    uris = [f"https://example.com/lost/{i}/{'x' * 3000}" for i in range(20)]
    with pytest.raises(errors.CasError):
        trio.run(_push_once, server.endpoint, uris, lost)
    tracer.wait(timeout=30)
    assert server.process.wait(timeout=30) == -9
    server.start()
    assert fetch(server.endpoint, ["https://example.com/kept"]).digest == kept
    for uri in uris:
        with pytest.raises(errors.NotFound):
            fetch(server.endpoint, [uri])
    push(server.endpoint, uris, lost)  # the index still takes pushes
    assert fetch(server.endpoint, [uris[-1]]).digest == lost


async def _push_once(endpoint: str, uris: list[str], digest: Digest) -> None:
    """One attempt, no retries: the server dies during it."""
    from casfs.config import RetryPolicy

    async with AssetClient(remote(endpoint, retry=RetryPolicy(attempts=1))) as assets:
        await assets.push_blob(uris, digest)


def test_read_only_token_may_fetch_but_not_push(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("writer\nreader read-only\n")
    with CasfsServer(tmp_path / "store", "--token-file", str(tokens)) as server:
        token_file = tmp_path / "writer"
        token_file.write_text("writer")
        reader_file = tmp_path / "reader"
        reader_file.write_text("reader")

        async def scenario() -> FetchedAsset:
            writer = remote(server.endpoint, token_file=token_file)
            reader = remote(server.endpoint, token_file=reader_file)
            async with CasClient(writer) as cas, AssetClient(writer) as assets:
                digest = await cas.upload_bytes(b"payload")
                await assets.push_blob([URI], digest)
            async with AssetClient(reader) as assets:
                with pytest.raises(errors.PermissionDenied):
                    await assets.push_blob(["https://example.com/other"], digest)
                return await assets.fetch_blob([URI])

        assert trio.run(scenario).uri == URI
