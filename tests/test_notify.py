"""casfs under a service manager: sd_notify READY=1 and STOPPING=1 from real processes,
and a restart after a crash (the stale mount is cleared)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mounts import CasfsMount, is_mounted
from tests.notify_socket import NotifySocket
from tests.servers import REPO, CasfsServer


def _wait_unmounted(mountpoint: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while is_mounted(mountpoint):
        assert time.monotonic() < deadline, f"{mountpoint} still mounted"
        time.sleep(0.05)


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground-embedded", "daemon-remote"])
def test_mount_is_ready_once_it_answers_and_says_stopping_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon: bool
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()

    def look(_: dict[str, str]) -> object:  # what a unit ordered After= this one finds
        return is_mounted(mountpoint), sorted(os.listdir(mountpoint / "main"))

    with NotifySocket(look) as notify, CasfsServer(tmp_path / "store") as server:
        monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
        if daemon:  # the child notifies, and names itself the main PID
            args = ["--remote", server.endpoint, "--daemon"]
            args += ["--log-file", str(tmp_path / "mnt-mount.log")]
            source = server.endpoint
        else:  # the embedded server's own READY=1 must not reach the unit
            args = ["--store", str(tmp_path / "embedded")]
            source = f"the embedded CAS in {tmp_path / 'embedded'}"
        with CasfsMount(mountpoint, *args) as mount:
            ready = notify.next()
            assert ready.fields["READY"] == "1"
            assert ready.seen == (True, ["actions", "assets", "blobs", "trees", "uploads"])
            assert ready.fields["STATUS"] == f"mounted {source} at {mountpoint}"
            assert ready.pid == int(ready.fields["MAINPID"])
            if daemon:
                assert mount.wait() == 0  # the parent returned once the mount answered
                assert ready.pid != mount.pid
            else:
                assert ready.pid == mount.pid
            os.kill(ready.pid, signal.SIGTERM)
            stopping = notify.next()
            assert (stopping.pid, stopping.fields["STOPPING"]) == (ready.pid, "1")
            _wait_unmounted(mountpoint)
            if not daemon:
                assert mount.wait() == 0
        leftover = [notify.messages.get_nowait() for _ in range(notify.messages.qsize())]
        assert all("READY" not in message.fields for message in leftover)


def test_serve_is_ready_once_it_listens_and_says_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = f"{hashlib.sha256(b'absent').hexdigest()}/6"

    def ask(fields: dict[str, str]) -> object:  # a client, the moment READY=1 arrives
        endpoint = "grpc://" + fields["STATUS"].removeprefix("listening on ")
        command = [sys.executable, "-m", "casfs", "stat", "--remote", endpoint, absent]
        result = subprocess.run(command, capture_output=True, cwd=REPO, timeout=60)
        return result.returncode, result.stdout.decode().strip()

    with NotifySocket(ask, path=tmp_path / "notify") as notify:
        monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
        with CasfsServer(tmp_path / "store") as server:
            ready = notify.next()
            assert (ready.pid, ready.fields["READY"]) == (server.process.pid, "1")  # type: ignore[union-attr]
            assert ready.fields["STATUS"] == f"listening on 127.0.0.1:{server.port}"
            assert ready.seen == (1, f"{absent} missing")
            assert server.stop() == 0
            stopping = notify.next()
            assert (stopping.pid, stopping.fields["STOPPING"]) == (ready.pid, "1")


def test_a_mount_after_a_crash_clears_the_stale_mount(server: CasfsServer, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    put = subprocess.run(
        [sys.executable, "-m", "casfs", "put", "--remote", server.endpoint, str(blob)],
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    digest = put.stdout.decode().strip()
    mountpoint = tmp_path / "mnt"
    with CasfsMount(mountpoint, "--remote", server.endpoint) as crashed:
        crashed.process.kill()  # type: ignore[union-attr]
        crashed.wait()
        assert is_mounted(mountpoint)
        with pytest.raises(OSError) as stale:
            os.stat(mountpoint)
        assert stale.value.errno == errno.ENOTCONN  # "Transport endpoint is not connected"
        crashed.log.unlink()
        with CasfsMount(mountpoint, "--remote", server.endpoint) as again:
            assert (mountpoint / "main" / "blobs" / digest).read_bytes() == data
            assert "stale mount" in again.log_text()


def test_serve_stops_on_a_sigterm_delivered_to_another_thread(tmp_path: Path) -> None:
    """A supervisor's SIGTERM may reach any thread of the process; the kernel picks one.
    Here it is sent to one of grpc's threads (tgkill): the server still stops at once."""
    sys_tgkill = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
    if sys_tgkill is None:
        pytest.skip(f"tgkill's number on {platform.machine()} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    with CasfsServer(tmp_path / "store") as server:
        assert server.process is not None
        pid = server.process.pid
        others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert others, "the server runs no thread besides its main thread"
        assert libc.syscall(sys_tgkill, pid, others[-1], signal.SIGTERM) == 0, ctypes.get_errno()
        assert server.process.wait(timeout=10) == 0
