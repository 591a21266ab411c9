"""Metrics and ``casfs status`` against a real server and a real mount, used with real tools.

The numbers are checked against what the test did: bytes read through the mount, blobs
uploaded, calls that failed. Prometheus text is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_cli import casfs
from tests.test_client_server import MIB, run_client, write_file

CAS = "build.bazel.remote.execution.v2.ContentAddressableStorage"
BYTESTREAM = "google.bytestream.ByteStream"


def metrics_url(log: str) -> str:
    """The endpoint a process logged ("metrics on http://...")."""
    found = re.search(r"metrics on (http://\S+)", log)
    assert found, f"no metrics URL in the log:\n{log[-2000:]}"
    return found.group(1)


@dataclass
class Scrape:
    """One scrape: every sample as (name, labels) -> value."""

    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def of(cls, url: str) -> Scrape:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and labels.items() <= have.items()
        )


@dataclass
class Setup:
    root: Path
    server: CasfsServer
    mount: CasfsMount

    @property
    def main(self) -> Path:
        return self.mount.mountpoint / "main"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("obs")
    with (
        CasfsServer(root / "store", "--metrics", "127.0.0.1:0") as server,
        CasfsMount(root / "mnt", "--remote", server.endpoint, "--metrics", "127.0.0.1:0") as mount,
    ):
        yield Setup(root, server, mount)


def test_metrics_count_what_was_done(setup: Setup) -> None:
    size = 6 * MIB + 5  # above the batch limit: a ByteStream Write
    source = write_file(setup.root / "payload", size)
    subprocess.run(["cp", str(source), str(setup.main / "uploads" / "payload")], check=True)
    digest = f"{hashlib.sha256(source.read_bytes()).hexdigest()}/{size}"
    blob = setup.main / "blobs" / digest
    read = subprocess.run(["sha256sum", str(blob)], capture_output=True, check=True)
    assert read.stdout.split()[0].decode() == digest.split("/")[0]
    assert not (setup.main / "blobs" / f"{'0' * 64}/1").exists()  # a lookup answered ENOENT
    missing = casfs("get", "--remote", setup.server.endpoint, f"{'1' * 64}/1")
    assert missing.returncode == 1

    url = metrics_url(setup.mount.log_text())
    where = urllib.parse.urlsplit(url)
    with socket.create_connection((where.hostname, where.port)):
        mount = Scrape.of(url)  # a scraper that says nothing holds up no one
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
    assert refused.value.code == 404
    assert mount.value("casfs_fuse_read_bytes_total") >= size
    assert mount.value("casfs_fuse_written_bytes_total") >= size
    assert mount.value("casfs_cas_read_bytes_total") >= size
    assert mount.value("casfs_cas_written_bytes_total") >= size
    assert mount.value("casfs_uploads_committed_total") >= 1
    assert mount.value("casfs_uploads_failed_total") == 0
    assert mount.value("casfs_uploads_in_flight") == 0
    # A sequential read leaves what it consumed to the page cache: bounded, maybe empty.
    assert 0 <= mount.value("casfs_cache_bytes") <= mount.value("casfs_cache_capacity_bytes")
    assert mount.value("casfs_cache_capacity_bytes") > 0
    assert mount.value("casfs_fuse_ops_total", op="read") >= 1
    assert mount.value("casfs_fuse_ops_total", op="write") >= 1
    assert mount.value("casfs_fuse_errors_total", op="lookup", errno="ENOENT") >= 1
    for service, method in [(CAS, "FindMissingBlobs"), (BYTESTREAM, "Write"), (BYTESTREAM, "Read")]:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": "OK"}
        calls = mount.value("casfs_grpc_client_handled_total", **labels)
        assert calls >= 1, method
        latency = "casfs_grpc_client_handling_seconds"
        assert mount.value(f"{latency}_count", **labels) == calls
        assert mount.value(f"{latency}_bucket", le="+Inf", **labels) == calls
        assert mount.value(f"{latency}_sum", **labels) > 0
    assert mount.value("process_resident_memory_bytes") > 0

    server = Scrape.of(metrics_url(setup.server.log.read_text()))
    read_ok = server.value(
        "casfs_grpc_server_handled_total", grpc_method="Read", grpc_code="OK"
    )
    assert read_ok >= 1
    assert server.value(
        "casfs_grpc_server_handled_total", grpc_method="Read", grpc_code="NOT_FOUND"
    ) >= 1  # fmt: skip
    assert server.value("casfs_grpc_server_handled_total", grpc_method="Write", grpc_code="OK") >= 1


def test_a_small_blob_costs_one_call_to_look_up_and_read(setup: Setup) -> None:
    data = b"small and whole " * 256
    digest = run_client(setup.server.endpoint, lambda c: c.upload_bytes(data))
    url = metrics_url(setup.server.log.read_text())

    def calls() -> dict[str, float]:
        scrape = Scrape.of(url)
        methods = ("FindMissingBlobs", "BatchReadBlobs", "Read")
        return {m: scrape.value("casfs_grpc_server_handled_total", grpc_method=m) for m in methods}

    # The mount's first lookup also learns how the server checks sizes (one more
    # FindMissingBlobs, once per mount): have another blob looked up first.
    other = run_client(setup.server.endpoint, lambda c: c.upload_bytes(b"looked up first"))
    assert (setup.main / "blobs" / f"{other.hash}/{other.size}").exists()
    before = calls()
    blob = setup.main / "blobs" / f"{digest.hash}/{digest.size}"
    assert subprocess.run(["cat", str(blob)], capture_output=True, check=True).stdout == data
    after = calls()
    # The lookup fetched it whole (one BatchReadBlobs, verified); the read asked nothing.
    assert {m: after[m] - before[m] for m in after} == {
        "FindMissingBlobs": 0,
        "BatchReadBlobs": 1,
        "Read": 0,
    }


def test_status_of_a_running_mount(setup: Setup) -> None:
    size = 3 * MIB
    source = write_file(setup.root / "status-payload", size)
    subprocess.run(["cp", str(source), str(setup.main / "uploads" / "status")], check=True)
    blob = setup.main / "blobs" / f"{hashlib.sha256(source.read_bytes()).hexdigest()}/{size}"
    assert blob.read_bytes() == source.read_bytes()
    refused = subprocess.run(["mkdir", str(setup.main / "blobs" / "new")], capture_output=True)
    assert refused.returncode != 0  # the read-only namespace: EACCES, counted as an error

    shown = casfs("status", str(setup.mount.mountpoint))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert setup.server.endpoint in text
    assert re.search(r"uploads\s+0 in flight, [1-9]\d* committed", text), text
    assert re.search(r"errors\s+EACCES [1-9]", text), text

    as_json = casfs("status", "--json", str(setup.mount.mountpoint))
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["pid"] == setup.mount.pid
    assert status["remote"] == setup.server.endpoint
    assert status["instances"] == ["main"]
    assert status["uptime_seconds"] > 0
    assert status["fuse"]["read_bytes"] >= size
    assert status["fuse"]["written_bytes"] >= size
    assert status["cas"]["fetched_bytes"] >= size
    assert status["uploads"]["committed"] >= 1 and status["uploads"]["failed"] == 0
    # Blocks read to their end were left to the page cache: what is used stays bounded.
    assert 0 <= status["cache"]["used_bytes"] <= status["cache"]["capacity_bytes"]
    assert status["cache"]["capacity_bytes"] == 512 * MIB
    assert 0 <= status["cache"]["hit_rate"] <= 1
    assert status["errors"].get("EACCES", 0) >= 1
    assert "ENOENT" not in status["errors"]  # names looked up and absent are no errors

    # The same document for anyone with getfattr, no casfs needed.
    raw = subprocess.run(
        ["getfattr", "-n", "user.casfs.status", "--only-values", str(setup.mount.mountpoint)],
        capture_output=True,
        check=True,
    )
    assert json.loads(raw.stdout)["pid"] == setup.mount.pid


def test_status_of_something_else_is_a_clear_error(tmp_path: Path) -> None:
    errors = {}
    for path in (tmp_path, tmp_path / "absent"):
        result = casfs("status", str(path))
        assert result.returncode == 1
        assert str(path).encode() in result.stderr and b"Traceback" not in result.stderr
        errors[path] = result.stderr
    assert b"not a casfs mount" in errors[tmp_path]


def test_status_without_metrics(tmp_path: Path, server: CasfsServer) -> None:
    """Metrics are off by default; the status needs none of them."""
    with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint) as mount:
        result = casfs("status", "--json", str(mount.mountpoint))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["uploads"]["in_flight"] == 0
        assert "metrics on" not in mount.log_text()


def test_metrics_address_in_use_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = casfs(
            "serve", "--store", str(tmp_path / "store"), "--listen", "127.0.0.1:0",
            "--metrics", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert result.returncode == 1
    assert b"cannot serve metrics on 127.0.0.1" in result.stderr
    assert b"Traceback" not in result.stderr


def test_status_of_a_mount_whose_process_died(tmp_path: Path, server: CasfsServer) -> None:
    with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint) as mount:
        assert mount.process is not None
        mount.process.kill()
        mount.wait()
        result = casfs("status", str(mount.mountpoint))
        assert result.returncode == 1
        assert b"process is gone" in result.stderr and b"fusermount3 -u" in result.stderr


def test_server_metrics_count_refused_calls(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    with CasfsServer(
        tmp_path / "store", "--token-file", str(tokens), "--metrics", "127.0.0.1:0"
    ) as server:
        anonymous = casfs("stat", "--remote", server.endpoint, f"{'3' * 64}/1")
        assert anonymous.returncode == 1
        allowed = casfs(
            "stat", "--remote", server.endpoint, "--token-file", str(tokens), f"{'3' * 64}/1"
        )
        assert allowed.returncode == 1 and b"missing" in allowed.stdout
        scrape = Scrape.of(metrics_url(server.log.read_text()))
    handled = "casfs_grpc_server_handled_total"
    assert scrape.value(handled, grpc_code="UNAUTHENTICATED") >= 1
    assert scrape.value(handled, grpc_method="FindMissingBlobs", grpc_code="OK") >= 1


def test_status_counts_a_failed_upload(tmp_path: Path) -> None:
    source = write_file(tmp_path / "src", 2 * MIB)
    with (
        CasfsServer(tmp_path / "store") as server,
        CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, "--retries", "2") as mount,
    ):
        server.kill()
        target = mount.mountpoint / "main" / "uploads" / "f"
        failed = subprocess.run(["cp", str(source), str(target)], capture_output=True)
        assert failed.returncode != 0
        result = casfs("status", "--json", str(mount.mountpoint))
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["uploads"]["failed"] >= 1
        assert status["uploads"]["committed"] == 0 and status["uploads"]["in_flight"] == 0
        assert status["errors"].get("EIO", 0) >= 1


def test_a_small_blob_is_read_without_a_fuse_read(setup: Setup) -> None:
    data = b"in the page cache at open " * 160
    digest = run_client(setup.server.endpoint, lambda c: c.upload_bytes(data))
    url = metrics_url(setup.mount.log_text())

    def reads() -> float:
        return Scrape.of(url).value("casfs_fuse_ops_total", op="read")

    before = reads()
    blob = setup.main / "blobs" / f"{digest.hash}/{digest.size}"
    assert subprocess.run(["cat", str(blob)], capture_output=True, check=True).stdout == data
    # The lookup fetched it whole; the open put it in the kernel's page cache.
    assert reads() == before
    assert blob.read_bytes() == data
