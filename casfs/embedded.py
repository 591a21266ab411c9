"""The embedded CAS as a private server: ``casfs serve`` on a store, over a unix socket.

``casfs mount``, ``put``, ``get`` and ``stat`` with no remote all reach the default store
this way, so every command sees the same blobs. Several of them may run on one store at
once: the store is safe for that (blobs appear only by an atomic rename of a verified
file, temporary files are per process, upload sessions are per resource name; see
``casfs.store.blobstore``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from casfs import notify

log = logging.getLogger("casfs")
PR_SET_PDEATHSIG = 1


class EmbeddedError(Exception):
    """The private server could not start."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def embedded_server(
    store: Path, instances: Sequence[str], *, quiet: bool = False
) -> Iterator[str]:
    """Run ``casfs serve`` on ``store`` for ``instances`` over a private unix socket; yield
    its URL. Its log goes to our standard error, or with ``quiet`` nowhere (but into the
    error if it does not start). The server stops when the block ends, and dies with this
    process if it is killed (PR_SET_PDEATHSIG). Raises ``EmbeddedError`` if it does not
    start."""
    runtime = Path(tempfile.mkdtemp(prefix="casfs-serve-"))
    socket = runtime / "cas.sock"
    server_log = runtime / "serve.log"
    command = [sys.executable, "-m", "casfs", "serve", "--store", str(store)]
    command += ["--listen", f"unix:{socket}"]
    for instance in instances:
        command += ["--instance", instance]
    with open(server_log, "wb") if quiet else contextlib.nullcontext() as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C at a terminal must reach only its user
            env=notify.without_notify_socket(dict(os.environ)),  # its READY=1 is not ours
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            said = server_log.read_text(errors="replace").strip() if quiet else ""
            last = f": {said.splitlines()[-1]}" if said else ""
            raise EmbeddedError(f"the embedded CAS on {store} did not start{last}")
        log.debug("embedded CAS: store %s", store)
        yield f"unix:{socket}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)
