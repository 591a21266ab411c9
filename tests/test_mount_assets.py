"""``<instance>/assets/`` on a real mount against a real ``casfs serve``: assets pushed with
``casfs asset push`` read with cat and sha256sum, their qualifiers with getfattr; files
copied in pushed at close, with the qualifiers setfattr gave them; hostile names; an
evicted blob; a server without the Remote Asset API."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from casfs.assetnames import sri_of
from casfs.cas.assets import AssetClient
from casfs.cas.client import CasClient
from casfs.digest import Digest, DigestFunction
from casfs.fs.assetcatalog import MountAssets
from casfs.fs.nodes.assets import AssetFile
from casfs.fs.nodes.state import MountState
from casfs.trees import encode
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_assets_cli import sri_of_file
from tests.test_assets_server import fetch, push, upload
from tests.test_assets_server import run as run_client
from tests.test_cli import casfs
from tests.test_nodes import run as run_nodes

TOOL = "https://example.com/dist/tool-1.2.tar.gz"


@dataclass
class Mounted:
    server: CasfsServer
    mount: CasfsMount
    root: Path  # <mountpoint>/main
    tmp: Path

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    def push(self, uri: str, target: str, *qualifiers: str) -> str:
        args = [a for q in qualifiers for a in ("-q", q)]
        result = casfs("asset", "push", "--remote", self.server.endpoint, uri, target, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode().strip()

    def fetch(self, uri: str) -> dict[str, object]:
        """What ``casfs asset fetch`` prints (in this process: no interpreter to start)."""
        found = fetch(self.server.endpoint, [uri])
        return {"size": found.digest.size, "qualifiers": dict(found.qualifiers)}


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    """One server and one mount for the module: the mount lists the server's catalog
    (``--asset-catalog``: the store is on this machine)."""
    tmp = tmp_path_factory.mktemp("assets")
    store = tmp / "store"
    with CasfsServer(store) as server:
        mountpoint = tmp / "mnt"
        args = ["--remote", server.endpoint, "--asset-catalog", str(store)]
        with CasfsMount(mountpoint, *args) as mount:
            yield Mounted(server, mount, mountpoint / "main", tmp)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def getfattr(path: Path, name: str) -> str:
    result = run("getfattr", "--only-values", "-n", name, path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def sri_of_bytes(data: bytes) -> str:
    return sri_of(DigestFunction.SHA256, hashlib.sha256(data).hexdigest())


def test_a_pushed_asset_reads_as_its_blob_with_its_qualifiers(mounted: Mounted) -> None:
    archive = mounted.tmp / "tool-1.2.tar.gz"
    archive.write_bytes(os.urandom(300_000))
    digest = mounted.push(TOOL, str(archive), "content_type=application/gzip")
    path = mounted.assets / "https/example.com/dist/tool-1.2.tar.gz"
    result = run("sha256sum", path)
    assert result.stdout.split()[0] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert subprocess.run(["cat", path], capture_output=True).stdout == archive.read_bytes()
    assert getfattr(path, "user.casfs.qualifier.content_type") == "application/gzip"
    assert getfattr(path, "user.casfs.qualifier.checksum.sri") == sri_of_file(archive)
    assert getfattr(path, "user.casfs.digest") == digest
    assert getfattr(path, "user.casfs.uri") == TOOL
    # The catalog lists it: every directory on the way, and the file with its size.
    assert "https" in os.listdir(mounted.assets)
    assert "example.com" in os.listdir(mounted.assets / "https")
    assert os.listdir(path.parent) == ["tool-1.2.tar.gz"]
    assert path.stat().st_size == 300_000


def test_a_urn_and_a_directory_asset(mounted: Mounted) -> None:
    endpoint = mounted.server.endpoint
    file = upload(endpoint, b"f\n")
    root = upload(endpoint, encode.directory_bytes([("f", encode.FileEntry(file, False))]))

    async def name_tree(_: CasClient, assets: AssetClient) -> None:
        await assets.push_directory(["urn:tree:1"], root)

    run_client(endpoint, name_tree)
    path = mounted.assets / "urn:" / "tree:1"
    assert path.is_dir() and os.listdir(path) == []
    assert getfattr(path, "user.casfs.digest") == f"{root.hash}/{root.size}"
    assert "urn:" in os.listdir(mounted.assets)


def test_cp_into_assets_pushes_at_close_and_setfattr_pushes_again(mounted: Mounted) -> None:
    report = mounted.tmp / "report.json"
    report.write_text('{"ok": true}\n')
    uri = "https://reports.example.com/ci/42/report.json"
    target = mounted.assets / "https/reports.example.com/ci/42/report.json"
    os.makedirs(target.parent)  # a view only: nothing is pushed for directories
    assert run("cp", report, target).returncode == 0
    fetched = casfs("asset", "fetch", "--remote", mounted.server.endpoint, uri)
    answer = json.loads(fetched.stdout)
    assert answer["size"] == report.stat().st_size
    assert answer["qualifiers"] == {"checksum.sri": sri_of_file(report)}
    assert run("cat", target).stdout == report.read_text()
    # A qualifier set on the asset pushes it again with it.
    setfattr = run("setfattr", "-n", "user.casfs.qualifier.content_type", "-v", "application/json",
                   target)  # fmt: skip
    assert setfattr.returncode == 0, setfattr.stderr
    assert mounted.fetch(uri)["qualifiers"] == {
        "checksum.sri": sri_of_file(report),
        "content_type": "application/json",
    }
    # Written anew: the qualifiers stay, the checksum follows the content.
    report.write_text('{"ok": false}\n')
    assert run("cp", report, target).returncode == 0
    answer = mounted.fetch(uri)
    assert answer["qualifiers"] == {
        "checksum.sri": sri_of_file(report),
        "content_type": "application/json",
    }
    assert run("cat", target).stdout == report.read_text()


def test_qualifiers_set_before_close_travel_with_the_push(mounted: Mounted) -> None:
    uri = "https://example.com/docs/readme.md"
    target = mounted.assets / "https/example.com/docs/readme.md"
    os.makedirs(target.parent, exist_ok=True)
    with open(target, "wb") as file:
        file.write(b"# readme\n")
        os.setxattr(target, "user.casfs.qualifier.content_type", b"text/markdown")
        os.setxattr(target, "user.casfs.qualifier.graviton.namespace", b'{"schema": "v2"}')
        # Not pushed before its close (no subprocess here: a fork's copy of the
        # descriptor closes too, and every close commits, as in uploads/).
        assert "readme.md" not in os.listdir(target.parent)
        assert os.getxattr(target, "user.casfs.qualifier.content_type") == b"text/markdown"
    answer = mounted.fetch(uri)
    assert answer["qualifiers"] == {
        "checksum.sri": sri_of_file(target),
        "content_type": "text/markdown",
        "graviton.namespace": '{"schema": "v2"}',
    }


def test_qualifiers_are_bounded(mounted: Mounted) -> None:
    target = mounted.assets / "https/example.com/bounded"
    target.write_bytes(b"x")
    with pytest.raises(OSError) as raised:
        os.setxattr(target, "user.casfs.qualifier.big", b"v" * (17 << 10))
    assert raised.value.errno == errno.E2BIG
    with pytest.raises(OSError) as raised:
        os.setxattr(target, "user.other", b"v")
    assert raised.value.errno == errno.ENOTSUP
    with open(target, "wb") as file:
        file.write(b"y")
        for i in range(31):  # and checksum.sri makes 32, the API's bound
            os.setxattr(target, f"user.casfs.qualifier.q{i}", b"v")
        with pytest.raises(OSError) as raised:
            os.setxattr(target, "user.casfs.qualifier.q31", b"v")
        assert raised.value.errno == errno.E2BIG


def _wait_for_another_inode(path: Path, inode: int) -> None:
    """Until a lookup of ``path`` finds another inode than ``inode``."""
    deadline = time.monotonic() + 20
    while os.stat(path).st_ino == inode:
        assert time.monotonic() < deadline, f"{path} stays inode {inode}"
        time.sleep(0.05)


def test_an_asset_written_anew_keeps_its_qualifiers_whichever_node_is_asked(
    mounted: Mounted,
) -> None:
    """An asset opened with O_TRUNC stays the kernel's inode of the committed asset, while a
    fresh lookup of its path (once the kernel's entry expires) finds the file being written,
    a second inode. Both act on the file being written: its qualifiers, bounded as one set,
    are pushed at its close with its new content, and nothing is pushed before."""
    uri = "https://example.com/anew"
    target = mounted.assets / "https/example.com/anew"
    with open(target, "xb") as file:
        file.write(b"x")
        written = os.fstat(file.fileno()).st_ino
    # The close's release reaches the mount after close() returns: until then a lookup
    # still finds the file written, not the committed asset.
    _wait_for_another_inode(target, written)
    with open(target, "wb") as file:
        committed = os.fstat(file.fileno()).st_ino  # the inode of the committed asset
        assert committed != written
        file.write(b"y")
        file.flush()
        for i in range(15):
            os.setxattr(file.fileno(), f"user.casfs.qualifier.q{i}", b"v")
        assert mounted.fetch(uri)["qualifiers"] == {"checksum.sri": sri_of_bytes(b"x")}
        _wait_for_another_inode(target, committed)  # once ANSWER_TTL has passed
        for i in range(15, 31):  # and checksum.sri makes 32, the API's bound
            os.setxattr(target, f"user.casfs.qualifier.q{i}", b"v")
        for where in (file.fileno(), target):
            # No checksum.sri while written (the old content's would be wrong); the push
            # adds the new content's, and the bound counts it already.
            assert "user.casfs.qualifier.checksum.sri" not in os.listxattr(where)
            assert os.getxattr(where, "user.casfs.qualifier.q0") == b"v"
            assert os.getxattr(where, "user.casfs.qualifier.q30") == b"v"
            with pytest.raises(OSError) as raised:
                os.setxattr(where, "user.casfs.qualifier.q31", b"v")
            assert raised.value.errno == errno.E2BIG
        os.removexattr(file.fileno(), "user.casfs.qualifier.q30")
    answer = mounted.fetch(uri)
    assert answer["size"] == 1
    assert answer["qualifiers"] == {
        "checksum.sri": sri_of_bytes(b"y"),
        **{f"q{i}": "v" for i in range(30)},
    }


def test_a_qualifier_set_after_a_close_is_pushed_at_once(mounted: Mounted) -> None:
    """Once a close committed the file (another descriptor keeps it open, as between a
    close and its release), a qualifier set is pushed then: no later close may come."""
    uri = "https://example.com/closed"
    target = mounted.assets / "https/example.com/closed"
    with open(target, "wb") as file:
        file.write(b"z")
        file.flush()
        os.close(os.dup(file.fileno()))  # a close: committed and pushed
        assert mounted.fetch(uri)["qualifiers"] == {"checksum.sri": sri_of_bytes(b"z")}
        os.setxattr(target, "user.casfs.qualifier.content_type", b"text/plain")
        assert mounted.fetch(uri)["qualifiers"] == {
            "checksum.sri": sri_of_bytes(b"z"),
            "content_type": "text/plain",
        }


def test_hostile_uris_never_make_paths_outside_assets(mounted: Mounted) -> None:
    """A URI whose query holds '..' pieces, or an empty piece, is shown escaped or not at
    all; names that would stand for '.' or '..' are no such file."""
    uris = ["https://evil.example.com/x?/../../etc", "https://evil.example.com/dir/"]
    push(mounted.server.endpoint, uris, Digest.of_bytes(b""))
    evil = mounted.assets / "https/evil.example.com"
    assert sorted(os.listdir(evil)) == ["dir"]  # x?/../.. cannot be shown
    assert os.listdir(evil / "dir") == ["%"]  # the empty piece after the trailing '/'
    for name in ("%2e%2e", "%2E", "x?/%2e%2e"):
        assert not (evil / name).exists()
    with pytest.raises(OSError) as raised:
        (mounted.assets / "https/example.com/%2e%2e").mkdir()
    assert raised.value.errno == errno.EINVAL


def test_a_server_without_the_api(server_without_assets: str, tmp_path: Path) -> None:
    args = ["--remote", server_without_assets, "--retries", "1", "--no-check-remote"]
    with CasfsMount(tmp_path / "mnt", *args) as mount:
        assets = mount.mountpoint / "main/assets"
        for _ in range(2):
            result = run("cat", assets / "https/example.com/x")
            assert "Operation not supported" in result.stderr, result.stderr
        with pytest.raises(OSError) as raised:
            os.listdir(assets)
        assert raised.value.errno == errno.ENOTSUP
        status = casfs("status", str(mount.mountpoint))
        assert "does not serve the Remote Asset API" in status.stdout.decode()
        said = [line for line in mount.log_text().splitlines() if "assets/" in line]
        assert len(said) == 1, said


def test_an_upload_with_a_uri_is_pushed_with_its_qualifiers(mounted: Mounted) -> None:
    """uploads/: the qualifiers and the URI set before the close travel with the push
    after the commit; a URI set on a committed file pushes it at once."""
    pending = mounted.root / "uploads" / "notes.txt"
    with open(pending, "wb") as file:
        file.write(b"notes\n")
        os.setxattr(pending, "user.casfs.qualifier.content_type", b"text/plain")
        os.setxattr(pending, "user.casfs.uri", b"urn:notes:1")
    answer = mounted.fetch("urn:notes:1")
    assert answer["qualifiers"] == {
        "checksum.sri": sri_of_file(pending),
        "content_type": "text/plain",
    }
    committed = mounted.root / "uploads" / "later.txt"
    committed.write_bytes(b"later\n")
    result = run("setfattr", "-n", "user.casfs.uri", "-v", "urn:later:1", committed)
    assert result.returncode == 0, result.stderr
    assert mounted.fetch("urn:later:1")["size"] == 6
    assert getfattr(committed, "user.casfs.uri") == "urn:later:1"
    with pytest.raises(OSError) as raised:
        os.setxattr(committed, "user.casfs.uri", b"https://h/../x")
    assert raised.value.errno == errno.EINVAL
    bounded = mounted.root / "uploads" / "bounded.txt"
    with open(bounded, "wb") as file:  # 31, and the push's checksum.sri makes the 32
        file.write(b"b")
        for i in range(31):
            os.setxattr(bounded, f"user.casfs.qualifier.q{i}", b"v")
        with pytest.raises(OSError) as raised:
            os.setxattr(bounded, "user.casfs.qualifier.q31", b"v")
        assert raised.value.errno == errno.E2BIG


def test_without_a_catalog_or_the_right_to_push(tmp_path: Path) -> None:
    """A mount that cannot read the server's catalog, with a token that may read but not
    write: a full path is answered by FetchBlob and the listing shows only what this
    mount fetched; a copy of a blob the CAS has (the upload sends nothing) whose push is
    refused fails cp's close and shows nothing; a blob the server evicted (a real
    eviction: the store at its --max-size) is no such file."""
    tokens = tmp_path / "tokens"
    tokens.write_text("writer\nreader read-only\n")
    (tmp_path / "writer").write_text("writer")
    (tmp_path / "reader").write_text("reader")
    payload = tmp_path / "payload"
    payload.write_bytes(b"payload\n")
    mib = 1 << 20
    limits = ["--max-size", str(2 * mib), "--evict", "--token-file", str(tokens)]
    with CasfsServer(tmp_path / "store", *limits) as server:
        writer = remote(server.endpoint, token_file=tmp_path / "writer")

        async def fill() -> None:
            async with CasClient(writer) as cas, AssetClient(writer) as assets:
                await assets.push_blob(["https://h/first"], await cas.upload_bytes(os.urandom(mib)))
                await assets.push_blob(["https://h/x"], await cas.upload_bytes(b"hello\n"))
                await cas.upload_bytes(payload.read_bytes())

        trio.run(fill)
        args = ["--remote", server.endpoint, "--token-file", str(tmp_path / "reader")]
        with CasfsMount(tmp_path / "mnt", *args) as mount:
            assets = mount.mountpoint / "main/assets"
            assert os.listdir(assets) == []
            assert run("cat", assets / "https/h/x").stdout == "hello\n"
            assert os.listdir(assets / "https/h") == ["x"]
            assert not (assets / "https/h/missing").exists()

            result = run("cp", payload, assets / "https/h/payload")
            assert result.returncode == 1 and "Permission denied" in result.stderr, result
            assert os.listdir(assets / "https/h") == ["x"]
            assert not (assets / "https/h/payload").exists()

            async def evict() -> None:  # the least recently used goes: first
                async with CasClient(writer) as cas:
                    await cas.upload_bytes(os.urandom(mib))

            trio.run(evict)
            result = run("cat", assets / "https/h/first")
            assert result.returncode == 1 and "No such file" in result.stderr, result.stderr


def test_concurrent_qualifier_changes_on_one_asset_all_stay(mounted: Mounted) -> None:
    """Eight processes each set a different qualifier of one asset at once: all eight
    stay. (The kernel holds the inode's lock across a setxattr, so these reach the mount
    one at a time; the mount's own lock per URI is what the next test shows.)"""
    uri = "https://example.com/dist/many-qualifiers.bin"
    blob = mounted.tmp / "many-qualifiers.bin"
    blob.write_bytes(b"many qualifiers\n")
    mounted.push(uri, str(blob))
    target = mounted.assets / "https/example.com/dist/many-qualifiers.bin"
    names = [f"user.casfs.qualifier.q{i}" for i in range(8)]
    setters = [
        subprocess.Popen(["setfattr", "-n", name, "-v", f"v{i}", str(target)])
        for i, name in enumerate(names)
    ]
    assert [setter.wait(timeout=60) for setter in setters] == [0] * 8
    expected = {f"q{i}": f"v{i}" for i in range(8)} | {"checksum.sri": sri_of_file(blob)}
    assert mounted.fetch(uri)["qualifiers"] == expected
    for i, name in enumerate(names):
        assert getfattr(target, name) == f"v{i}"


def test_qualifier_changes_of_one_asset_take_turns(mounted: Mounted, tmp_path: Path) -> None:
    """The same as eight requests of the mount at once, with no kernel in between (the
    kernel serializes setxattr on one inode, not a Fetch or another inode of the URI):
    without one change at a time per asset, each pushes the set it read before the
    others' pushes, and only one qualifier stays."""
    uri = "https://example.com/dist/taking-turns.bin"
    blob = mounted.tmp / "taking-turns.bin"
    blob.write_bytes(b"taking turns\n")
    mounted.push(uri, str(blob))
    endpoint = mounted.server.endpoint

    async def scenario(state: MountState) -> None:
        async with AssetClient(remote(endpoint, "main")) as client:
            state.assets = MountAssets({"main": client})
            assert await state.assets.resolve("main", uri) is not None
            node = AssetFile("main", uri)
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    name = f"user.casfs.qualifier.q{i}".encode()
                    nursery.start_soon(node.setxattr, state, name, f"v{i}".encode())
            assert state.assets.record("main", uri) is not None

    run_nodes(tmp_path, scenario, endpoint=endpoint)
    expected = {f"q{i}": f"v{i}" for i in range(8)} | {"checksum.sri": sri_of_file(blob)}
    assert mounted.fetch(uri)["qualifiers"] == expected
