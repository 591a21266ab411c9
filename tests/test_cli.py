"""The ``casfs`` command as a user runs it: serve, put, get, stat, and its errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO, CasfsServer


def casfs(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "casfs", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )


def test_put_get_stat(server: CasfsServer, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    small = b"tiny"
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "small").write_bytes(small)
    put = casfs("put", "--remote", server.endpoint, str(tmp_path / "big"), str(tmp_path / "small"))
    assert put.returncode == 0, put.stderr
    lines = put.stdout.decode().split()
    assert lines == [
        f"{hashlib.sha256(data).hexdigest()}/{len(data)}",
        f"{hashlib.sha256(small).hexdigest()}/{len(small)}",
    ]
    got = casfs("get", "--remote", server.endpoint, lines[0], str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out").read_bytes() == data
    to_stdout = casfs("get", "--remote", server.endpoint, lines[1])
    assert to_stdout.stdout == small
    assert casfs("stat", "--remote", server.endpoint, lines[1]).returncode == 0
    absent = f"{hashlib.sha256(b'absent').hexdigest()}/6"
    stat = casfs("stat", "--remote", server.endpoint, absent)
    assert (stat.returncode, stat.stdout.decode().strip()) == (1, f"{absent} missing")
    missing = casfs("get", "--remote", server.endpoint, absent)
    assert missing.returncode == 1
    assert b"NOT_FOUND" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["get", "--remote", "grpc://127.0.0.1:1", "nothex/10"],
        ["stat", "--remote", "ftp://example", f"{'0' * 64}/1"],
        ["serve", "--max-size", "lots"],
        ["serve", "--max-size", "inf"],
        ["mount", "/nonexistent-dir-casfs", "--instance", "blobs"],
        ["stat", "--timeout", "0", f"{'0' * 64}/1"],
        ["stat", "--timeout", "inf", f"{'0' * 64}/1"],
    ],
)
def test_bad_input_is_a_clear_usage_error(args: list[str]) -> None:
    result = casfs(*args)
    assert result.returncode == 2
    assert result.stderr.strip()
    assert b"Traceback" not in result.stderr


def test_serve_config_file_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "casfs.toml"
    config.write_text('listen = "127.0.0.1:0"\n[instances.main]\nstore = "x"\ncolour = "red"\n')
    result = casfs("serve", "--config", str(config))
    assert result.returncode == 2
    assert str(config).encode() in result.stderr and b"'colour'" in result.stderr


def test_serve_config_file_instances(tmp_path: Path) -> None:
    config = tmp_path / "casfs.toml"
    config.write_text(
        f'[instances.team]\nstore = "{tmp_path / "team"}"\n'
        f'[instances."ci/linux"]\nstore = "{tmp_path / "ci"}"\n'
    )
    with CasfsServer(tmp_path / "unused", "--config", str(config)) as srv:
        put = casfs("put", "--remote", srv.endpoint, "--instance", "ci/linux", str(config))
        assert put.returncode == 0, put.stderr
        digest = put.stdout.decode().strip()
        other = casfs("stat", "--remote", srv.endpoint, "--instance", "team", digest)
        assert other.returncode == 1  # another instance, another store
        unknown = casfs("stat", "--remote", srv.endpoint, "--instance", "main", digest)
        assert unknown.returncode == 1 and b"unknown instance" in unknown.stderr
    assert list((tmp_path / "ci" / "cas").glob("sha256/*/*"))


def test_version_and_help() -> None:
    assert casfs("--version").stdout.decode().startswith("casfs ")
    help_text = casfs("--help").stdout.decode()
    assert "examples:" in help_text and "casfs serve" in help_text


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = CasfsServer(tmp_path / "store").start()
    assert server.stop() == 0
