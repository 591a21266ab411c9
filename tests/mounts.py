"""``casfs mount`` in a subprocess, for tests that use real tools on a real FUSE mount."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.servers import REPO, Managed


def is_mounted(mountpoint: Path) -> bool:
    """Whether a FUSE file system is mounted exactly at ``mountpoint`` (no stat: a hung
    mount must not hang the test)."""
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == target for line in mountinfo)


class CasfsMount(Managed):
    """A mount process; as a context manager it always unmounts, even when a test fails."""

    def __init__(
        self,
        mountpoint: Path,
        *args: str,
        command: Sequence[str] = (sys.executable, "-m", "casfs"),
        default_disk_cache: bool = False,
    ) -> None:
        """``command`` runs casfs: this checkout's by default, or an installed ``casfs``.
        Unless ``default_disk_cache``, the mount gets a disk cache of its own (never the
        user's) when ``args`` name none."""
        self.mountpoint = mountpoint
        self.command = tuple(command)
        if "--cache-dir" not in args:  # never the user's own cache directory
            args = (*args, "--cache-dir", str(mountpoint.parent / f"{mountpoint.name}-cache"))
        if not default_disk_cache and not {"--disk-cache", "--no-disk-cache"} & set(args):
            args = (*args, "--disk-cache", str(mountpoint.parent / f"{mountpoint.name}-disk"))
        self.args = args
        self.log = mountpoint.parent / f"{mountpoint.name}-mount.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        """Wait until the log says ``text`` (what the kernel sends after a close, such as
        RELEASE, comes a moment after the program's close returned)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log_text()[-2000:]}"
            time.sleep(0.05)

    def start(self) -> CasfsMount:
        if not is_mounted(self.mountpoint):  # a stale mount fails even a stat
            self.mountpoint.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command, "mount", str(self.mountpoint), *self.args],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if is_mounted(self.mountpoint) and "mounted" in self.log_text():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"casfs mount did not come up:\n{self.log_text()[-3000:]}")

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        """Unmount (fusermount3 -u), wait for the process, and clean up whatever is left."""
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if is_mounted(self.mountpoint):  # last resort: never leave a mount behind
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        return code


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")
