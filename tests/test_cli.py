"""The ``casfs`` command as a user runs it: serve, put, get, stat, and its errors."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from casfs import __version__
from tests.mounts import CasfsMount
from tests.servers import REPO, CasfsServer
from tests.test_client_server import MIB, write_file


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
        ["mount", "/nonexistent-dir-casfs", "--metrics", "localhost:http"],
        ["serve", "--metrics", "127.0.0.1:70000"],
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
    version = casfs("--version").stdout.decode().splitlines()
    assert version[0] == f"casfs {__version__}"
    for part in ("grpcio", "protobuf", "pyfuse3"):  # each named with its installed version
        assert f"{part} {importlib.metadata.version(part)}" in version[1], version
    assert re.search(r"\blibfuse 3\.\d+\.\d+\b", version[1]), version
    help_text = casfs("--help").stdout.decode()
    assert "examples:" in help_text and "casfs serve" in help_text
    assert "exit status:" in help_text
    for command in ("serve", "mount", "put", "get", "stat", "status", "asset", "find"):
        text = casfs(command, "--help").stdout.decode()
        assert "examples:" in text and f"casfs {command} " in text, command
        assert "exit status:" in text, command


def test_put_stdin_and_a_missing_file(server: CasfsServer, tmp_path: Path) -> None:
    """'-' reads standard input; a file that cannot be read is reported by name and
    skipped, the others are still uploaded, and the exit status says something failed."""
    data = os.urandom(100_000)
    (tmp_path / "ok").write_bytes(b"ok")
    put = casfs(
        "put", "--remote", server.endpoint, "-", str(tmp_path / "absent"), str(tmp_path / "ok"),
        stdin=data,
    )  # fmt: skip
    assert put.returncode == 1
    assert put.stdout.decode().split() == [
        f"{hashlib.sha256(data).hexdigest()}/{len(data)}",
        f"{hashlib.sha256(b'ok').hexdigest()}/2",
    ]
    assert str(tmp_path / "absent").encode() in put.stderr
    assert b"No such file" in put.stderr and b"Traceback" not in put.stderr


def test_get_to_a_file_leaves_nothing_on_failure(server: CasfsServer, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "out.bin"
    missing = casfs("get", "--remote", server.endpoint, f"{'2' * 64}/10", str(out))
    assert missing.returncode == 1
    assert list(out.parent.iterdir()) == []  # no out.bin, no temporary file


def test_progress_bar_only_on_a_terminal(server: CasfsServer, tmp_path: Path) -> None:
    big = write_file(tmp_path / "big", 12 * MIB)
    piped = casfs("put", "--remote", server.endpoint, str(big))
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == b""  # no bar, no noise when stderr is not a terminal
    digest = piped.stdout.decode().strip()
    got = casfs("get", "--remote", server.endpoint, digest, str(tmp_path / "back"))
    assert (got.returncode, got.stderr) == (0, b"")
    assert (tmp_path / "back").read_bytes() == big.read_bytes()

    for args in (("put", str(big)), ("get", digest, str(tmp_path / "again"))):
        code, terminal = on_a_terminal(*args, "--remote", server.endpoint)
        assert code == 0, terminal
        assert "%|" in terminal and "/12.0M" in terminal, terminal  # tqdm's bar and size


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run casfs with stderr on a pseudo-terminal; return its exit status and what the
    terminal got."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "casfs", *args],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        cwd=REPO,
    )
    os.close(terminal)
    received = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(controller)
        code = process.wait(timeout=120)
    return code, received.decode(errors="replace")


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = CasfsServer(tmp_path / "store").start()
    assert server.stop() == 0


def test_put_get_stat_with_no_remote_use_the_store_the_mount_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's first minutes: mount with no remote, then put, get and stat with no
    remote either. They share the default store, at the same time as the mount writes to
    it, and the store stays sound: every blob whole and named by its hash."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # casfs's defaults, not ours
    store = tmp_path / "data" / "casfs" / "store"
    sources = [write_file(tmp_path / f"src{i}", size) for i, size in enumerate(SIZES)]
    with CasfsMount(tmp_path / "mnt") as mount:
        uploads = mount.mountpoint / "main" / "uploads"
        blobs = mount.mountpoint / "main" / "blobs"
        # The mount and casfs put write the same files into one store at once.
        putting = subprocess.Popen(
            [sys.executable, "-m", "casfs", "put", *map(str, sources)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        for source in sources:
            subprocess.run(["cp", str(source), str(uploads / source.name)], check=True)
        out, err = putting.communicate(timeout=120)
        assert putting.returncode == 0, err
        digests = out.decode().split()
        assert digests == [f"{_sha256(s)}/{s.stat().st_size}" for s in sources]
        for source, digest in zip(sources, digests, strict=True):
            assert (blobs / digest).read_bytes() == source.read_bytes()
            assert casfs("stat", digest).returncode == 0
            assert casfs("get", digest).stdout == source.read_bytes()
        written = tmp_path / "by-put"
        written.write_bytes(b"put while mounted")
        digest = casfs("put", str(written)).stdout.decode().strip()
        assert (blobs / digest).read_bytes() == b"put while mounted"  # the mount sees it
    stored = sorted((store / "cas" / "sha256").glob("*/*"))
    expected = {d.split("/")[0] for d in [*digests, digest] if not d.endswith("/0")}
    assert [blob.name for blob in stored] == sorted(expected)  # the empty blob needs no file
    for blob in stored:
        assert _sha256(blob) == blob.name


SIZES = [0, 1, 4096, 100_000, 3 * MIB + 7, 9 * MIB]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
