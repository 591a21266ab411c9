"""``casfs mount --daemon``: detach from the terminal once the file system is mounted.

The parent forks before anything opens a grpc channel or starts trio (neither survives a
fork), then waits on a pipe: the child writes "ok" once mounted, and the parent exits 0;
if the child fails first, the parent prints its error and exits 1. So a script that runs
``casfs mount --daemon`` can use the mount as soon as the command returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def daemonize(log_file: Path) -> Iterator[Callable[[], None]]:
    """In the child: yield ``ready()``, to call once mounted. The parent never returns."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            message = pipe.read()
        if message == "ok":
            os._exit(0)
        sys.stderr.write(message or f"casfs: the mount failed; see {log_file}\n")
        os._exit(1)
    os.close(read_end)
    os.setsid()
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    pipe = os.fdopen(write_end, "w")

    def ready() -> None:
        pipe.write("ok")
        pipe.close()

    try:
        yield ready
    except BaseException as error:
        if not pipe.closed:
            pipe.write(f"casfs: {error}\n")
            pipe.close()
        raise
