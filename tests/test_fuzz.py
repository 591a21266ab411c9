"""Property-based tests with hypothesis: random request sequences against the embedded
server (checked against a model), and hostile names against the server and a real mount.

The server runs in-process (``build_server`` on 127.0.0.1) and is driven with raw gRPC
stubs, so that requests a well-behaved client would never send get through. Example counts
are kept modest so the suite stays fast; ``HYPOTHESIS_PROFILE=long`` runs many more.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from casfs._proto import bytestream_pb2, bytestream_pb2_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.config import StoreConfig
from casfs.digest import Digest, DigestFunction, digest_file
from casfs.server.app import build_server
from casfs.server.instances import Instances
from tests.mounts import CasfsMount, is_mounted
from tests.servers import CasfsServer
from tests.test_client_server import sha256_file

settings.register_profile(
    "default", max_examples=30, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("long", max_examples=500, stateful_step_count=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

Code = grpc.StatusCode
_rng = random.Random(7)
BLOBS = [bytes(_rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 7, 1000, 70_000)]
DIGESTS = [Digest.of_bytes(b) for b in BLOBS]
UPLOAD_IDS = [str(uuid.UUID(int=i)) for i in range(3)]


class EmbeddedServer:
    """``build_server`` on a fresh store in a temporary directory, and stubs for it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="casfs-fuzz-"))
        self.store = self.root / "store"
        instances = Instances({"main": StoreConfig(self.store, fsync=False)})
        self.server, port = build_server(instances, "127.0.0.1:0", max_streams=8)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(self.channel)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=None).wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def check_store(self) -> None:
        """Nothing outside the store; every stored blob hashes to its name."""
        assert os.listdir(self.root) == ["store"]
        assert set(os.listdir(self.store)) <= {"cas", "tmp", "uploads", "ac"}
        for blob in (self.store / "cas").glob("*/*/*"):
            assert sha256_file(blob) == blob.name, blob

    def read(self, name: str, offset: int, limit: int) -> tuple[Code, bytes]:
        request = bytestream_pb2.ReadRequest(
            resource_name=name, read_offset=offset, read_limit=limit
        )
        try:
            return Code.OK, b"".join(r.data for r in self.bytestream.Read(request, timeout=30))
        except grpc.RpcError as error:
            return error.code(), b""  # type: ignore[attr-defined]

    def write(self, requests: list[bytestream_pb2.WriteRequest]) -> tuple[Code, int]:
        try:
            response = self.bytestream.Write(iter(requests), timeout=30)
        except grpc.RpcError as error:
            return error.code(), -1  # type: ignore[attr-defined]
        return Code.OK, response.committed_size

    def query(self, name: str) -> tuple[Code, int, bool]:
        request = bytestream_pb2.QueryWriteStatusRequest(resource_name=name)
        try:
            response = self.bytestream.QueryWriteStatus(request, timeout=30)
        except grpc.RpcError as error:
            return error.code(), -1, False  # type: ignore[attr-defined]
        return Code.OK, response.committed_size, response.complete


def _write_name(upload: int, blob: int) -> str:
    return f"main/uploads/{UPLOAD_IDS[upload]}/blobs/{DIGESTS[blob]}"


def _part_key(upload: int, blob: int) -> str:
    """What orders the server's .part files of one blob: the hash of the upload's name."""
    return hashlib.sha256(_write_name(upload, blob).encode()).hexdigest()


class ServerMachine(RuleBasedStateMachine):
    """Random Read/Write/QueryWriteStatus/Batch* requests, each answer checked against a
    model of what the server must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.server = EmbeddedServer()
        self.stored = {0}  # blob indexes held (the empty blob always is)
        # (upload id, blob) -> [committed bytes, whether they differ from the blob's,
        # whether a .part file holds them]
        self.sessions: dict[tuple[int, int], list[int]] = {}

    def take_over(self, key: tuple[int, int]) -> None:
        """A session the server does not know takes over the .part of another upload of
        the same blob: the one with the most bytes, of equals the first by file name."""
        blob = key[1]
        donors = [
            (-state[0], _part_key(other, blob), (other, blob))
            for (other, b), state in self.sessions.items()
            if b == blob and state[2]
        ]
        if donors:
            donor = min(donors)[2]
            self.sessions[key] = self.sessions.pop(donor)

    def teardown(self) -> None:
        self.server.close()

    @rule(
        upload=st.integers(0, 2), blob=st.integers(0, 4),
        start=st.sampled_from(["committed", "zero", "other"]),
        length=st.sampled_from(["rest", "half", "none", "past"]),
        finish=st.booleans(), corrupt=st.booleans(),
    )  # fmt: skip
    def write(
        self, upload: int, blob: int, start: str, length: str, finish: bool, corrupt: bool
    ) -> None:
        data, size = BLOBS[blob], len(BLOBS[blob])
        key = (upload, blob)
        committed = self.sessions.get(key, [0])[0]  # what the client knows of its session
        offset = {"committed": committed, "zero": 0, "other": committed + 3}[start]
        rest = max(0, size - offset)
        count = {"rest": rest, "half": rest // 2, "none": 0, "past": rest + 5}[length]
        piece = bytearray(data[offset : offset + count])
        piece += bytes(count - len(piece))  # "past": more bytes than the blob has
        if corrupt and piece:
            piece[0] ^= 0xFF
        request = bytestream_pb2.WriteRequest(
            resource_name=_write_name(upload, blob), write_offset=offset, data=bytes(piece),
            finish_write=finish,
        )  # fmt: skip
        code, answer = self.server.write([request])
        # The model's expectation, in the order the server decides.
        if blob in self.stored:
            assert (code, answer) == (Code.OK, size)
            return
        if key not in self.sessions:
            self.take_over(key)
        committed, tainted, on_disk = self.sessions.setdefault(key, [0, 0, 0])
        if offset != committed and offset != 0:
            assert code == Code.FAILED_PRECONDITION
            return
        if offset == 0 and committed:
            committed, tainted, on_disk = 0, 0, 0  # the session restarts
        if committed + len(piece) > size:
            assert code == Code.INVALID_ARGUMENT
            self.sessions[key] = [committed, tainted, on_disk]
            return
        committed += len(piece)
        tainted |= piece != data[offset : offset + len(piece)]
        if not finish:
            assert (code, answer) == (Code.OK, committed)
            self.sessions[key] = [committed, tainted, 1]
            return
        if committed != size:
            assert code == Code.INVALID_ARGUMENT
            self.sessions[key] = [0, 0, 0]
        elif tainted:
            assert code == Code.DATA_LOSS
            self.sessions[key] = [0, 0, 0]
        else:
            assert (code, answer) == (Code.OK, size)
            self.stored.add(blob)
            del self.sessions[key]

    @rule(upload=st.integers(0, 2), blob=st.integers(0, 4))
    def query_write_status(self, upload: int, blob: int) -> None:
        code, committed, complete = self.server.query(_write_name(upload, blob))
        if (upload, blob) not in self.sessions and blob not in self.stored:
            self.take_over((upload, blob))
        session = self.sessions.get((upload, blob))
        if session is not None:
            assert (code, committed, complete) == (Code.OK, session[0], False)
        elif blob in self.stored:
            assert (code, committed, complete) == (Code.OK, len(BLOBS[blob]), True)
        else:
            assert code == Code.NOT_FOUND

    @rule(
        blob=st.integers(0, 4), offset=st.integers(-5, 80_005), limit=st.integers(-5, 80_005)
    )
    def read(self, blob: int, offset: int, limit: int) -> None:
        code, data = self.server.read(f"main/blobs/{DIGESTS[blob]}", offset, limit)
        size = len(BLOBS[blob])
        if limit < 0:
            assert code == Code.INVALID_ARGUMENT
        elif not 0 <= offset <= size:
            assert code == Code.OUT_OF_RANGE
        elif blob not in self.stored:
            assert code == Code.NOT_FOUND
        else:
            end = offset + limit if limit else size
            assert (code, data) == (Code.OK, BLOBS[blob][offset:end])

    @rule(items=st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=4))
    def batch_update(self, items: list[tuple[int, bool]]) -> None:
        request = re_pb2.BatchUpdateBlobsRequest(instance_name="main")
        for blob, corrupt in items:
            data = bytearray(BLOBS[blob])
            if corrupt and data:
                data[-1] ^= 1
            request.requests.add(digest=DIGESTS[blob].to_proto(), data=bytes(data))
        response = self.server.cas.BatchUpdateBlobs(request, timeout=30)
        assert len(response.responses) == len(items)
        for (blob, corrupt), answer in zip(items, response.responses, strict=True):
            bad = corrupt and BLOBS[blob]
            expected = Code.INVALID_ARGUMENT if bad else Code.OK
            assert answer.status.code == expected.value[0]
            if not bad:
                self.stored.add(blob)

    @rule(blobs=st.lists(st.integers(0, 4), max_size=5))
    def batch_read_and_find_missing(self, blobs: list[int]) -> None:
        digests = [DIGESTS[b].to_proto() for b in blobs]
        response = self.server.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name="main", digests=digests), timeout=30
        )
        for blob, answer in zip(blobs, response.responses, strict=True):
            if blob in self.stored:
                assert (answer.status.code, answer.data) == (0, BLOBS[blob])
            else:
                assert answer.status.code == Code.NOT_FOUND.value[0]
        missing = self.server.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name="main", blob_digests=digests), timeout=30
        )
        expected = {DIGESTS[b] for b in blobs if b not in self.stored}
        assert {Digest.from_proto(d) for d in missing.missing_blob_digests} == expected

    @precondition(lambda self: len(self.stored) > 1)
    @invariant()
    def store_is_sound(self) -> None:
        self.server.check_store()


TestServerMachine = ServerMachine.TestCase


# -- hostile names -------------------------------------------------------------------------

HASH = DIGESTS[3].hash
SEGMENTS = st.sampled_from(
    [
        "..", ".", "", "/", "\x00", "main", "blobs", "uploads", "compressed-blobs", "zstd",
        "blake3", "sha256", HASH, HASH.upper(), HASH[:-1], "g" * 64, "-1", "0", "1000",
        str(2**63), str(2**64 + 1), "1e3", " 1000", "1000\n", "%2e%2e", "x" * 10_000,
        "../" * 20 + "etc/passwd", "é", "\udcff",
    ]
)  # fmt: skip
NAMES = st.lists(SEGMENTS, min_size=1, max_size=8).map("/".join)


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedServer]:
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.close()


DOCUMENTED = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.OUT_OF_RANGE, Code.OK}


@given(name=NAMES, offset=st.integers(-(2**63), 2**63 - 1), limit=st.integers(-(2**63), 2**63 - 1))
def test_hostile_resource_names_are_refused_cleanly(
    embedded: EmbeddedServer, name: str, offset: int, limit: int
) -> None:
    try:
        name.encode()
    except UnicodeEncodeError:
        assume(False)  # grpc cannot even send it
    code, _ = embedded.read(name, offset, limit)
    assert code in DOCUMENTED, (name, code)
    write = bytestream_pb2.WriteRequest(
        resource_name=name, write_offset=offset, data=b"x", finish_write=True
    )
    code, _ = embedded.write([write])
    assert code in DOCUMENTED | {Code.FAILED_PRECONDITION, Code.DATA_LOSS}, (name, code)
    code, _, _ = embedded.query(name)
    assert code in DOCUMENTED, (name, code)
    embedded.check_store()
    assert not list((embedded.store / "uploads").glob("*.part"))  # nothing kept for it


# -- hostile paths through a real mount ------------------------------------------------------

FUSE_ERRORS = {
    errno.ENOENT, errno.EINVAL, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY,
}  # fmt: skip


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CasfsMount]]:
    root = tmp_path_factory.mktemp("hostile")
    with (
        CasfsServer(root / "store") as server,
        CasfsMount(root / "mnt", "--remote", server.endpoint) as mounted,
    ):
        yield root, mounted


PATH_SEGMENTS = st.one_of(
    SEGMENTS.filter(lambda s: "\x00" not in s and "\udcff" not in s).map(os.fsencode),
    st.binary(min_size=1, max_size=300).filter(lambda b: b"\x00" not in b and b"/" not in b),
)


@given(
    where=st.sampled_from([b"main/blobs", b"main/uploads", b"main", b""]),
    segments=st.lists(PATH_SEGMENTS, min_size=1, max_size=4),
    action=st.sampled_from(["stat", "read", "create", "mkdir", "listdir"]),
)
def test_hostile_paths_never_crash_or_escape(
    mount: tuple[Path, CasfsMount], where: bytes, segments: list[bytes], action: str
) -> None:
    root, mounted = mount
    base = os.fsencode(mounted.mountpoint)
    path = os.path.join(base, where, *segments) if where else os.path.join(base, *segments)
    assume(os.path.normpath(path).startswith(base + b"/"))  # never ask the kernel to leave it
    before = sorted(os.listdir(root))
    try:
        if action == "stat":
            os.stat(path)
        elif action == "read":
            with open(path, "rb") as file:
                file.read(100)
        elif action == "create":
            with open(path, "wb") as file:
                file.write(b"hostile")
            os.unlink(path)
        elif action == "mkdir":
            os.mkdir(path)
            os.rmdir(path)
        else:
            os.listdir(path)
    except OSError as error:
        allowed = FUSE_ERRORS | ({errno.EIO} if action == "create" else set())
        assert error.errno in allowed, (path, action, error)
    assert is_mounted(mounted.mountpoint)
    assert os.listdir(mounted.mountpoint) == ["main"]
    assert sorted(os.listdir(root)) == before
    assert mounted.process is not None and mounted.process.poll() is None


# -- file operations in uploads/ against a model ---------------------------------------------

FILE_NAMES = st.sampled_from(["a", "b", "c", "sub/d", "sub/e"])
CONTENTS = st.one_of(st.binary(max_size=3000), st.sampled_from([b"", bytes(300_000)]))


def test_uploads_behave_like_a_model(mount: tuple[Path, CasfsMount]) -> None:
    """create, rewrite, rename, unlink, a writer kept open across steps, reads: the tree in
    uploads/ always equals a dict of name -> bytes, and each closed file's digest is its
    content's."""
    _, mounted = mount
    uploads = mounted.mountpoint / "main" / "uploads"

    class UploadsMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.dir = uploads / f"model-{uuid.uuid4().hex[:8]}"
            (self.dir / "sub").mkdir(parents=True)
            self.model: dict[str, bytes] = {}
            self.writer: tuple[str, Any, bytearray] | None = None  # name, file, written

        def teardown(self) -> None:
            if self.writer is not None:
                self.writer[1].close()
            shutil.rmtree(self.dir)

        def busy(self, name: str) -> bool:
            return self.writer is not None and self.writer[0] == name

        @rule(name=FILE_NAMES, data=CONTENTS)
        def write_whole(self, name: str, data: bytes) -> None:
            if self.busy(name):
                return
            (self.dir / name).write_bytes(data)
            self.model[name] = data
            digest = os.getxattr(self.dir / name, "user.casfs.digest").decode()
            assert digest == str(Digest.of_bytes(data))

        def pick(self, index: int) -> str | None:
            """An existing file no writer holds, or None."""
            names = sorted(n for n in self.model if not self.busy(n))
            return names[index % len(names)] if names else None

        @rule(index=st.integers(0, 9), data=CONTENTS)
        def append_to_committed_is_refused(self, index: int, data: bytes) -> None:
            name = self.pick(index)
            if name is None:
                return
            with pytest.raises(PermissionError), open(self.dir / name, "ab") as file:
                file.write(data)
            assert (self.dir / name).read_bytes() == self.model[name]

        @precondition(lambda self: self.writer is None)
        @rule(name=FILE_NAMES)
        def open_writer(self, name: str) -> None:
            self.writer = (name, open(self.dir / name, "wb"), bytearray())  # noqa: SIM115
            self.model[name] = b""

        @precondition(lambda self: self.writer is not None)
        @rule(data=CONTENTS)
        def write_more(self, data: bytes) -> None:
            assert self.writer is not None
            name, file, written = self.writer
            file.write(data)
            file.flush()
            written += data
            assert (self.dir / name).read_bytes() == bytes(written)  # served from the spool

        @precondition(lambda self: self.writer is not None)
        @rule()
        def close_writer(self) -> None:
            assert self.writer is not None
            name, file, written = self.writer
            file.close()
            self.writer = None
            self.model[name] = bytes(written)
            digest = os.getxattr(self.dir / name, "user.casfs.digest").decode()
            assert digest == str(Digest.of_bytes(bytes(written)))

        @rule(index=st.integers(0, 9), to=FILE_NAMES)
        def rename(self, index: int, to: str) -> None:
            source = self.pick(index)
            if source is None or source == to or self.busy(to):
                return
            os.rename(self.dir / source, self.dir / to)
            self.model[to] = self.model.pop(source)

        @rule(index=st.integers(0, 9))
        def unlink(self, index: int) -> None:
            name = self.pick(index)
            if name is None:
                return
            os.unlink(self.dir / name)
            del self.model[name]

        @invariant()
        def tree_equals_the_model(self) -> None:
            found = {
                str(p.relative_to(self.dir)) for p in self.dir.rglob("*") if not p.is_dir()
            }
            assert found == set(self.model)
            for name, data in self.model.items():
                if not self.busy(name):
                    assert (self.dir / name).read_bytes() == data, name

    long = os.environ.get("HYPOTHESIS_PROFILE") == "long"
    quick = settings(
        max_examples=150 if long else 15, stateful_step_count=40 if long else 20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )  # fmt: skip
    run_state_machine_as_test(UploadsMachine, settings=quick)
    assert is_mounted(mounted.mountpoint)


# -- random messages to every method of a real casfs serve -----------------------------------

CAS_METHOD = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
AC_METHOD = "/build.bazel.remote.execution.v2.ActionCache/"
BS_METHOD = "/google.bytestream.ByteStream/"
# method -> how it is called: "unary", "server-stream" or "client-stream"
METHODS = {
    CAS_METHOD + "FindMissingBlobs": "unary",
    CAS_METHOD + "BatchUpdateBlobs": "unary",
    CAS_METHOD + "BatchReadBlobs": "unary",
    CAS_METHOD + "GetTree": "server-stream",
    AC_METHOD + "GetActionResult": "unary",
    AC_METHOD + "UpdateActionResult": "unary",
    "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities": "unary",
    BS_METHOD + "Read": "server-stream",
    BS_METHOD + "Write": "client-stream",
    BS_METHOD + "QueryWriteStatus": "unary",
}
FUNCTIONS = (DigestFunction.SHA256, DigestFunction.BLAKE3)
POOL = [(data, Digest.of_bytes(data, f)) for data in BLOBS[:4] for f in FUNCTIONS]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
INSTANCES = st.one_of(st.sampled_from(["main", "", "nope", "x" * 3000, "main/../x"]), TEXT)
FUNCTION_VALUES = st.integers(-1, 12)
GOOD_DIGESTS = st.sampled_from([digest for _, digest in POOL]).map(Digest.to_proto)
BAD_DIGESTS = st.builds(
    re_pb2.Digest,
    hash=st.one_of(st.sampled_from(["", HASH, HASH.upper(), HASH[:32], "ab" * 20, "g" * 64]), TEXT),
    size_bytes=st.integers(-(2**63), 2**63 - 1),
)
DIGEST_PROTOS = st.one_of(GOOD_DIGESTS, BAD_DIGESTS)


def _payload(data: bytes) -> st.SearchStrategy[tuple[bytes, int]]:
    """Bytes claimed to be ``data``, and their compressor: right, compressed, or not."""
    return st.sampled_from(
        [
            (data, 0),
            (zstd_compress(data), 1),
            (data + b"x", 0),
            (b"\x28\xb5\x2f\xfd" + data, 1),
            (data, 2),  # not deflate
            (data, 7),  # an unknown compressor
        ]
    )


def zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


UPDATE_ITEMS = st.one_of(
    st.sampled_from(POOL).flatmap(
        lambda blob: _payload(blob[0]).map(
            lambda p: re_pb2.BatchUpdateBlobsRequest.Request(
                digest=blob[1].to_proto(), data=p[0], compressor=p[1]
            )
        )
    ),
    st.builds(
        re_pb2.BatchUpdateBlobsRequest.Request,
        digest=DIGEST_PROTOS, data=st.binary(max_size=100), compressor=st.integers(0, 8),
    ),
)  # fmt: skip


def _write_names() -> st.SearchStrategy[str]:
    def name(blob: tuple[bytes, Digest], upload: int, compressed: bool) -> str:
        digest = blob[1]
        segment = f"{digest.function.name_lower}/" if digest.function.in_resource_name else ""
        kind = "compressed-blobs/zstd" if compressed else "blobs"
        return f"main/uploads/{UPLOAD_IDS[upload]}/{kind}/{segment}{digest}"

    valid = st.builds(name, st.sampled_from(POOL), st.integers(0, 2), st.booleans())
    return st.one_of(valid, NAMES.filter(lambda n: "\udcff" not in n))


WRITES = st.lists(
    st.builds(
        bytestream_pb2.WriteRequest,
        resource_name=_write_names(), write_offset=st.integers(-5, 80_000),
        data=st.one_of(st.sampled_from([d[:100] for d, _ in POOL]), st.binary(max_size=300)),
        finish_write=st.booleans(),
    ),
    min_size=1, max_size=3,
)  # fmt: skip
READ_NAMES = st.one_of(
    st.sampled_from([f"main/blobs/{d}" for _, d in POOL if d.function is DigestFunction.SHA256]),
    NAMES.filter(lambda n: "\udcff" not in n),
)


def _message(method: str, message: Any) -> tuple[str, Any]:
    if isinstance(message, list):
        return method, [m.SerializeToString() for m in message]
    return method, message.SerializeToString()


MESSAGES = st.one_of(
    st.builds(
        lambda i, f, d: _message(CAS_METHOD + "FindMissingBlobs", re_pb2.FindMissingBlobsRequest(
            instance_name=i, digest_function=f, blob_digests=d)),
        INSTANCES, FUNCTION_VALUES, st.lists(DIGEST_PROTOS, max_size=4),
    ),
    st.builds(
        lambda i, f, r: _message(CAS_METHOD + "BatchUpdateBlobs", re_pb2.BatchUpdateBlobsRequest(
            instance_name=i, digest_function=f, requests=r)),
        INSTANCES, st.sampled_from([0, 0, 1, 9, 3]), st.lists(UPDATE_ITEMS, max_size=4),
    ),
    st.builds(
        lambda i, f, d: _message(CAS_METHOD + "BatchReadBlobs", re_pb2.BatchReadBlobsRequest(
            instance_name=i, digest_function=f, digests=d)),
        INSTANCES, FUNCTION_VALUES, st.lists(DIGEST_PROTOS, max_size=4),
    ),
    st.builds(
        lambda i, d, s, t: _message(CAS_METHOD + "GetTree", re_pb2.GetTreeRequest(
            instance_name=i, root_digest=d, page_size=s, page_token=t)),
        INSTANCES, DIGEST_PROTOS, st.integers(-5, 5), st.one_of(st.just(""), TEXT),
    ),
    st.builds(
        lambda i, d, c, o: _message(AC_METHOD + "UpdateActionResult",
            re_pb2.UpdateActionResultRequest(instance_name=i, action_digest=d,
                action_result=re_pb2.ActionResult(exit_code=c, stdout_digest=o))),
        INSTANCES, DIGEST_PROTOS, st.integers(-(2**31), 2**31 - 1), DIGEST_PROTOS,
    ),
    st.builds(
        lambda i, d: _message(AC_METHOD + "GetActionResult", re_pb2.GetActionResultRequest(
            instance_name=i, action_digest=d)),
        INSTANCES, DIGEST_PROTOS,
    ),
    st.builds(
        lambda i: _message(
            "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
            re_pb2.GetCapabilitiesRequest(instance_name=i)),
        INSTANCES,
    ),
    st.builds(
        lambda n, o, limit: _message(BS_METHOD + "Read", bytestream_pb2.ReadRequest(
            resource_name=n, read_offset=o, read_limit=limit)),
        READ_NAMES, st.integers(-5, 80_000), st.integers(-5, 80_000),
    ),
    st.builds(lambda w: _message(BS_METHOD + "Write", w), WRITES),
    st.builds(
        lambda n: _message(BS_METHOD + "QueryWriteStatus",
            bytestream_pb2.QueryWriteStatusRequest(resource_name=n)),
        _write_names(),
    ),
    st.tuples(  # bytes that may not decode at all
        st.sampled_from(sorted(METHODS)), st.binary(max_size=64)
    ).map(lambda m: (m[0], [m[1]] if METHODS[m[0]] == "client-stream" else m[1])),
)  # fmt: skip


def _send(channel: grpc.Channel, method: str, payload: Any) -> Code:
    """Send one request (or request stream) of serialized bytes; the status code."""
    kind = METHODS[method]
    try:
        if kind == "unary":
            channel.unary_unary(method)(payload, timeout=30)
        elif kind == "server-stream":
            for _ in channel.unary_stream(method)(payload, timeout=30):
                pass
        else:
            channel.stream_unary(method)(iter(payload), timeout=30)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return Code.OK


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CasfsServer, grpc.Channel]]:
    root = tmp_path_factory.mktemp("messages")
    with CasfsServer(root / "store", "--no-fsync") as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield server, channel
        finally:
            channel.close()


SERVER_FAULTS = {Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}


MESSAGE_EXAMPLES = 2000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 200


@settings(
    max_examples=MESSAGE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(messages=st.lists(MESSAGES, min_size=5, max_size=15))
def test_random_messages_never_fault_the_server(
    served: tuple[CasfsServer, grpc.Channel], messages: list[tuple[str, Any]]
) -> None:
    """A few thousand messages, well-formed or not, to every method: no INTERNAL (or
    UNKNOWN, a hang, a crash), nothing outside the store, every stored blob whole."""
    server, channel = served
    for method, payload in messages:
        code = _send(channel, method, payload)
        assert code not in SERVER_FAULTS, (method, payload, code)
    assert server.process is not None and server.process.poll() is None
    assert sorted(p.name for p in server.store.parent.iterdir()) == [
        "store", "store-server.log"
    ]  # fmt: skip
    assert {p.name for p in server.store.iterdir()} <= {"cas", "tmp", "uploads", "ac"}
    for function in FUNCTIONS:
        for blob in (server.store / "cas" / function.name_lower).glob("*/*"):
            assert digest_file(blob, function).hash == blob.name, blob
