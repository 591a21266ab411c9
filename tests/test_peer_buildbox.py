"""Interop with buildbox-casd, a C++ REAPI CAS server written by others.

Our client against casd as the server, and casd as a real client of ``casfs serve`` (a proxy
with ``--cas-remote``). casd's quirks that the client must survive are listed in
tests/peers/README.md; these tests hit several of them (no QueryWriteStatus, read limits
past the end refused, max_batch_total_size_bytes = 0 with a real 4 MiB limit).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs.cas import errors
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.peers.buildbox import Casd
from tests.servers import CasfsServer
from tests.test_client_server import MIB, download, run_client, sha256_file, write_file

pytestmark = pytest.mark.peer


@pytest.fixture
def casd(tmp_path: Path) -> Iterator[Casd]:
    with Casd(tmp_path) as server:
        yield server


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB + 1, 64 * MIB], ids=lambda s: f"{s}B")
def test_client_round_trip_with_casd(casd: Casd, tmp_path: Path, size: int) -> None:
    source = write_file(tmp_path / "in", size)

    async def scenario(client: CasClient) -> tuple[Digest, bytes]:
        digest = await client.upload_file(source)
        assert not await client.find_missing([digest])
        await download(client, digest, tmp_path / "out")
        # casd refuses a read_limit past the end: the client must clamp it.
        tail = await client.read_range(digest, max(0, size - 3), MIB)
        return digest, tail

    digest, tail = run_client(casd.endpoint, scenario, instance="")
    assert digest.hash == sha256_file(source)
    assert sha256_file(tmp_path / "out") == digest.hash
    assert tail == source.read_bytes()[-3:]


def test_batches_with_casd(casd: Casd) -> None:
    # casd advertises no batch limit but refuses batches over ~4 MiB: 12 MiB of small blobs
    # must be split below that.
    blobs = [os.urandom(300 * 1024) for _ in range(40)]
    digests = [Digest.of_bytes(b) for b in blobs]

    async def scenario(client: CasClient) -> dict[Digest, bytes]:
        await client.batch_update(list(zip(digests, blobs, strict=True)))
        return await client.batch_read(digests[::-1])

    assert run_client(casd.endpoint, scenario, instance="") == dict(
        zip(digests, blobs, strict=True)
    )


def test_errors_from_casd(casd: Casd, tmp_path: Path) -> None:
    missing = Digest.of_bytes(b"not in casd")
    with pytest.raises(errors.NotFound):
        run_client(casd.endpoint, lambda c: c.read_range(missing, 0, 1), instance="")
    source = write_file(tmp_path / "in", 2 * MIB)
    liar = Digest(hashlib.sha256(b"other").hexdigest(), 2 * MIB)
    with pytest.raises(errors.InvalidArgument):
        run_client(casd.endpoint, lambda c: c.write(liar, source), instance="")
    with pytest.raises(errors.InvalidArgument):  # casd serves only the empty instance name
        run_client(casd.endpoint, lambda c: c.find_missing([missing]), instance="main")


def test_casd_proxy_in_front_of_casfs_serve(tmp_path: Path) -> None:
    """casd as a real client of our server: blobs cross both ways byte-identical."""
    with (
        CasfsServer(tmp_path / "store") as ours,
        Casd(tmp_path, cas_remote=f"http://127.0.0.1:{ours.port}", name="proxy") as proxy,
    ):
        through_proxy = write_file(tmp_path / "a", 24 * MIB + 5)
        small = tmp_path / "small"
        small.write_bytes(b"a small blob, batched")
        direct = write_file(tmp_path / "b", 9 * MIB + 1)

        # Written through the proxy (ByteStream and batch) -> read from casfs serve.
        a = run_client(proxy.endpoint, lambda c: c.upload_file(through_proxy), instance="")
        s = run_client(proxy.endpoint, lambda c: c.upload_file(small), instance="")
        run_client(ours.endpoint, lambda c: download(c, a, tmp_path / "a.out"), instance="")
        assert run_client(ours.endpoint, lambda c: c.read_blob(s), instance="") == (
            small.read_bytes()
        )
        assert sha256_file(tmp_path / "a.out") == a.hash

        # Written to casfs serve -> read through the proxy (fetched on demand).
        b = run_client(ours.endpoint, lambda c: c.upload_file(direct), instance="")
        run_client(proxy.endpoint, lambda c: download(c, b, tmp_path / "b.out"), instance="")
        assert sha256_file(tmp_path / "b.out") == b.hash
        assert run_client(proxy.endpoint, lambda c: c.read_range(b, b.size - 1, 10), instance="")


def test_casd_capabilities_are_understood(casd: Casd) -> None:
    async def scenario(client: CasClient) -> tuple[object, ...]:
        caps = await client.capabilities()
        return caps.digest_functions, caps.compressors, caps.batch_budget()

    functions, compressors, budget = run_client(casd.endpoint, scenario, instance="")
    assert [f.name_lower for f in functions] == ["sha256"]  # type: ignore[attr-defined]
    assert not compressors
    assert 0 < budget < 4 * MIB  # advertised 0 = no limit, but the message limit holds


def test_compression_falls_back_when_not_advertised(casd: Casd, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"compressible " * 1_000_000)

    async def scenario(client: CasClient) -> Digest:
        digest = await client.upload_file(source)
        await download(client, digest, tmp_path / "out")
        return digest

    run_client(casd.endpoint, scenario, instance="", compression=True)
    assert (tmp_path / "out").read_bytes() == source.read_bytes()


def test_mount_over_casd(casd: Casd, tmp_path: Path) -> None:
    """The mount with buildbox-casd as its remote: casd serves only the empty instance, so
    blobs/ sits at the mount's root."""
    import subprocess

    from tests.mounts import CasfsMount

    source = write_file(tmp_path / "in", 5 * MIB + 7)
    digest = run_client(casd.endpoint, lambda c: c.upload_file(source), instance="")
    with CasfsMount(tmp_path / "mnt", "--remote", casd.endpoint, "--instance", "") as mount:
        blob = mount.mountpoint / "blobs" / digest.hash / str(digest.size)
        subprocess.run(["cmp", str(source), str(blob)], check=True)
        tail = subprocess.run(["tail", "-c", "3", str(blob)], capture_output=True, check=True)
        assert tail.stdout == source.read_bytes()[-3:]  # casd refuses unclamped limits
        wrong = mount.mountpoint / "blobs" / digest.hash / "12"
        assert not wrong.exists()


def test_cp_into_a_mount_over_casd(casd: Casd, tmp_path: Path) -> None:
    """Uploads through the mount to casd (no QueryWriteStatus, no advertised batch limit)."""
    import subprocess

    from tests.mounts import CasfsMount

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    sizes = {"empty": 0, "one": 1, "block": MIB + 1, "sub/big": 20 * MIB + 3}
    for name, size in sizes.items():
        write_file(tree / name, size)
    args = ["--remote", casd.endpoint, "--instance", "", "--cache-dir", str(tmp_path / "c")]
    fetched = tmp_path / "fetched"
    with CasfsMount(tmp_path / "mnt", *args) as mount:
        subprocess.run(["cp", "-r", str(tree), str(mount.mountpoint / "uploads")], check=True)
        for name in sizes:
            uploaded = mount.mountpoint / "uploads" / "tree" / name
            digest = Digest(sha256_file(tree / name), sizes[name])
            got = subprocess.run(
                ["getfattr", "--only-values", "-n", "user.casfs.digest", str(uploaded)],
                capture_output=True,
                check=True,
            )
            assert got.stdout.decode() == str(digest)
            blob = mount.mountpoint / "blobs" / digest.hash / str(digest.size)
            subprocess.run(["cmp", str(tree / name), str(blob)], check=True)
            run_client(casd.endpoint, lambda c, d=digest: download(c, d, fetched), instance="")
            assert sha256_file(fetched) == digest.hash


def test_a_wrong_size_looked_up_first_loses_nothing_on_casd(casd: Casd, tmp_path: Path) -> None:
    """casd answers FindMissingBlobs by hash alone and drops a blob read past its end under
    a wrong size: a lookup of a wrong size, before any read, must leave the blob readable
    (a small one was fetched whole at lookup, under the wrong size)."""
    import subprocess

    from tests.mounts import CasfsMount

    for size in (5000, 3 * MIB):  # fetched whole at lookup, and looked up by FindMissing
        source = write_file(tmp_path / f"in{size}", size)
        digest = run_client(casd.endpoint, lambda c, s=source: c.upload_file(s), instance="")
        mnt = tmp_path / f"mnt{size}"
        with CasfsMount(mnt, "--remote", casd.endpoint, "--instance", "") as mount:
            for wrong_size in (size - 1, size + 1):  # casd deletes on a read past the end
                wrong = mount.mountpoint / "blobs" / digest.hash / str(wrong_size)
                subprocess.run(["stat", str(wrong)], capture_output=True)
            blob = mount.mountpoint / "blobs" / digest.hash / str(size)
            subprocess.run(["cmp", str(source), str(blob)], check=True)
            assert "reading it deletes the blob" in mount.log_text()  # learned, on our probe
        kept = run_client(casd.endpoint, lambda c, d=digest: c.read_blob(d), instance="")
        assert kept == source.read_bytes()
