"""casfs installed without pyfuse3 (a server-only install): serve, put, get, stat, status and
--version work; mount exits 2 with one line naming what to install, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import REPO, CasfsServer


@pytest.fixture
def no_fuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PYTHONPATH shadows pyfuse3 with a module whose import fails as a missing one does, for
    every casfs process started from here on (CasfsServer copies os.environ)."""
    shim = tmp_path / "no-pyfuse3"
    shim.mkdir()
    (shim / "pyfuse3.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyfuse3'\", name='pyfuse3')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(shim))
    yield shim


def casfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casfs", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_the_shim_makes_pyfuse3_unimportable(no_fuse: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "import pyfuse3"], capture_output=True)
    assert result.returncode == 1 and b"No module named 'pyfuse3'" in result.stderr


def test_serve_put_get_stat_status_need_no_fuse(no_fuse: Path, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "in").write_bytes(data)
    with CasfsServer(tmp_path / "store") as server:
        remote = ("--remote", server.endpoint)
        put = casfs("put", *remote, str(tmp_path / "in"))
        assert put.returncode == 0, put.stderr
        digest = put.stdout.strip()
        stat = casfs("stat", *remote, digest)
        assert (stat.returncode, stat.stdout) == (0, f"{digest} present\n"), stat.stderr
        get = casfs("get", *remote, digest, str(tmp_path / "out"))
        assert get.returncode == 0, get.stderr
        assert (tmp_path / "out").read_bytes() == data
    status = casfs("status", str(tmp_path))
    assert status.returncode == 1 and "Traceback" not in status.stderr
    version = casfs("--version")
    assert version.returncode == 0 and version.stdout.startswith("casfs "), version.stderr


def test_mount_without_pyfuse3_is_one_line_and_exit_2(no_fuse: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    result = casfs("mount", str(tmp_path / "mnt"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pyfuse3" in result.stderr
    assert "apt-get install fuse3 libfuse3-dev pkg-config" in result.stderr
    helper = subprocess.run(
        [sys.executable, "-m", "casfs.mounthelper", "grpc://127.0.0.1:1", str(tmp_path / "mnt")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert helper.returncode == 2 and "pyfuse3" in helper.stderr, helper.stderr
    assert "Traceback" not in helper.stderr
