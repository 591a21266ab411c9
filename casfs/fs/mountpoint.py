"""The mountpoint as the kernel sees it: what is mounted there, a stale mount left by a
process that died, a second casfs mount refused, the FUSE options, the kernel's readahead.

Nothing here talks to a remote. ``_libfuse_says`` swaps file descriptor 2 for its block:
call it only from the thread that mounts, before other threads write to standard error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyfuse3

from casfs.config import MountConfig
from casfs.fs.errors import MountError
from casfs.fs.status import StatusError, read_status

log = logging.getLogger("casfs.fs")


def _mounted_at(mountpoint: Path) -> tuple[str, str] | None:
    """``(major:minor, fstype)`` of the file system mounted at ``mountpoint`` (the top of
    the stack), from mountinfo; None if nothing is mounted there.

    Not ``os.stat``: a stat of our own mountpoint before the FUSE loop runs would wait for
    an answer that only this process can give.
    """
    escaped = str(mountpoint)
    for char in "\\ \t\n":  # mountinfo writes these as octal escapes
        escaped = escaped.replace(char, f"\\{ord(char):03o}")
    found = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, rest = line.partition(" - ")
            numbers = fields.split()
            if len(numbers) > 4 and numbers[4] == escaped and rest:
                found = (numbers[2], rest.split()[0])  # the last match is the top
    return found


def _mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint``."""
    mounted = _mounted_at(mountpoint)
    return mounted[0] if mounted else None


def refuse_a_second_mount(mountpoint: Path) -> None:
    """A casfs mount already on ``mountpoint`` (and answering) is not mounted over: raise
    ``MountError`` saying which process holds it and how to unmount it."""
    mounted = _mounted_at(mountpoint)
    if mounted is None or not mounted[1].startswith("fuse"):
        return
    try:
        status = read_status(mountpoint)
    except StatusError:
        return  # another FUSE file system: mounting on top of it is the user's call
    raise MountError(
        f"{mountpoint} is mounted already, by casfs (pid {status.get('pid')}, "
        f"{status.get('remote')}); unmount it first: fusermount3 -u {mountpoint}"
    )


@contextlib.contextmanager
def libfuse_says() -> Iterator[list[str]]:
    """Collect what libfuse writes to standard error in the block (such as which mount
    option it does not know: its ``RuntimeError`` does not say), and write it on to
    standard error afterwards too. The list gets its lines when the block ends."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stderr.write(text)
            said.extend(line.removeprefix("fuse: ") for line in text.splitlines() if line)


def set_readahead(mountpoint: Path, kilobytes: int) -> None:
    """Raise the kernel's readahead for this mount (root only; best effort).

    The default 128 KiB caps FUSE reads at small requests; 1 MiB lets the kernel ask for
    more at once, which is most of the speed of a sequential read.
    """
    device = _mount_device(mountpoint)
    if device is None:
        log.info("could not set readahead: %s not in /proc/self/mountinfo", mountpoint)
        return
    path = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        path.write_text(str(kilobytes))
    except OSError as error:
        log.info("could not set readahead to %d KiB (%s): %s", kilobytes, path, error.strerror)


def fuse_options(config: MountConfig) -> set[str]:
    """The FUSE mount options; an ``fsname=``/``subtype=`` given by the user replaces ours
    (``mount.casfs`` names the mount after its source, as ``mount`` and ``df`` show it)."""
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    given = {option.partition("=")[0] for option in config.fuse_options}
    options |= {f"{key}=casfs" for key in ("fsname", "subtype") if key not in given}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    options.update(config.fuse_options)
    return options


def clear_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount a FUSE mount whose process died (stat says ENOTCONN), and nothing
    else: a live mount answers stat and is left alone (mounting fails on top of it)."""
    try:
        mountpoint.stat()
    except OSError as error:
        if error.errno != errno.ENOTCONN:
            return
    else:
        return
    log.warning("%s: a stale mount (its process died); unmounting it", mountpoint)
    result = subprocess.run(
        ["fusermount3", "-uz", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MountError(f"cannot clear the stale mount on {mountpoint}: {result.stderr.strip()}")
