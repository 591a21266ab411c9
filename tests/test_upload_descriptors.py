"""Real descriptors on a real mount against a model of the bytes (issue 14): hypothesis
opens, duplicates, writes at offsets, truncates, fsyncs, closes, renames, unlinks and
remounts, in any order, and after every close or fsync that returned 0 the committed blob
(``user.casfs.digest``, read back through ``blobs/``) is exactly what the program wrote:
no close returns 0 over a hole the program did not write.

The model is the lifecycle's rules as a program sees them: a file is its bytes; a close
of a writable descriptor, or any fsync, commits a changed file that still has a name; a
file whose last descriptor is closed after a commit keeps no local copy, so it opens
for writing only with O_TRUNC (EACCES otherwise).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from casfs.digest import Digest
from tests.mounts import CasfsMount, is_mounted
from tests.servers import CasfsServer

NAMES = st.sampled_from(["a", "b"])
DATA = st.one_of(st.binary(min_size=1, max_size=200), st.sampled_from([b"x" * 70_000]))
OFFSETS = st.sampled_from([0, 1, 100, 5000, 69_999, 70_000, 100_000])
SIZES = st.sampled_from([0, 1, 150, 70_000])
# how a descriptor is opened: (flags, writable)
MODES = {
    "w": (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, True),  # direct_io: around the page cache
    "w+": (os.O_RDWR | os.O_CREAT | os.O_TRUNC, True),  # through the page cache
    "r+": (os.O_RDWR, True),
    "a": (os.O_WRONLY, True),
    "r": (os.O_RDONLY, False),
}


@dataclass(eq=False)
class File:
    """A file as the program sees it: its bytes, and what casfs holds of it."""

    data: bytearray = field(default_factory=bytearray)
    committed: bool = False  # a commit holds ``data`` as it is
    spooled: bool = True  # casfs has a local copy, so it can be opened for writing
    handles: int = 0  # open file descriptions (a dup shares one)
    named: bool = True


@dataclass(eq=False)
class Handle:
    file: File
    writable: bool
    fds: int = 1


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasfsMount]:
    root = tmp_path_factory.mktemp("descriptors")
    with (
        CasfsServer(root / "store") as server,
        CasfsMount(root / "mnt", "--remote", server.endpoint) as mount,
    ):
        yield mount


def test_descriptors_commit_exactly_what_was_written(mounted: CasfsMount) -> None:
    uploads = mounted.mountpoint / "main" / "uploads"
    blobs = mounted.mountpoint / "main" / "blobs"

    class Descriptors(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            for name in os.listdir(uploads):
                os.unlink(uploads / name)
            self.names: dict[str, File] = {}
            self.fds: dict[int, Handle] = {}
            self.remounted = False

        def teardown(self) -> None:
            for fd in list(self.fds):
                os.close(fd)

        def name_of(self, file: File) -> str | None:
            return next((n for n, f in self.names.items() if f is file), None)

        def check_committed(self, file: File) -> None:
            """The committed blob of a named file is its bytes, read back from blobs/."""
            name = self.name_of(file)
            if name is None:
                return
            assert file.committed
            digest = os.getxattr(uploads / name, "user.casfs.digest").decode()
            assert digest == str(Digest.of_bytes(bytes(file.data))), name
            assert (blobs / digest).read_bytes() == file.data

        def forget(self, file: File) -> None:
            """The last description of a file is gone: a committed (or unnamed) file
            drops its local copy."""
            if not file.handles and (file.committed or not file.named):
                file.spooled = False

        def changed(self, file: File) -> None:
            file.committed = False

        # -- rules ----------------------------------------------------------------------

        @initialize(name=NAMES, mode=st.sampled_from(["w", "w+"]))
        def first_open(self, name: str, mode: str) -> None:
            self.open(name, mode)

        @rule(name=NAMES, mode=st.sampled_from(sorted(MODES)))
        def open(self, name: str, mode: str) -> None:
            flags, writable = MODES[mode]
            file = self.names.get(name)
            refused = None
            if file is None and not flags & os.O_CREAT:
                refused = errno.ENOENT
            elif file is not None and writable and not flags & os.O_TRUNC and not file.spooled:
                refused = errno.EACCES  # committed, no local copy: O_TRUNC only
            try:
                fd = os.open(uploads / name, flags, 0o644)
            except OSError as error:
                assert error.errno == refused, (name, mode)
                return
            assert refused is None, (name, mode)
            if file is None:
                file = self.names[name] = File()
            elif flags & os.O_TRUNC:
                file.data.clear()
                file.spooled = True
                self.changed(file)
            file.handles += 1
            self.fds[fd] = Handle(file, writable)

        @precondition(lambda self: self.fds)
        @rule(which=st.integers(0, 99))
        def dup(self, which: int) -> None:
            fd = sorted(self.fds)[which % len(self.fds)]
            handle = self.fds[fd]
            handle.fds += 1
            self.fds[os.dup(fd)] = handle

        def writable(self, which: int) -> int | None:
            fds = sorted(fd for fd, handle in self.fds.items() if handle.writable)
            return fds[which % len(fds)] if fds else None

        def any_writable(self) -> bool:
            return any(handle.writable for handle in self.fds.values())

        @precondition(any_writable)
        @rule(which=st.integers(0, 99), offset=OFFSETS, data=DATA)
        def write(self, which: int, offset: int, data: bytes) -> None:
            fd = self.writable(which)
            assert fd is not None
            assert os.pwrite(fd, data, offset) == len(data)
            file = self.fds[fd].file
            if offset > len(file.data):
                file.data.extend(bytes(offset - len(file.data)))
            file.data[offset : offset + len(data)] = data
            self.changed(file)

        @precondition(any_writable)
        @rule(which=st.integers(0, 99), size=SIZES)
        def truncate(self, which: int, size: int) -> None:
            fd = self.writable(which)
            assert fd is not None
            os.ftruncate(fd, size)
            file = self.fds[fd].file
            del file.data[size:]
            file.data.extend(bytes(size - len(file.data)))
            self.changed(file)

        @precondition(lambda self: self.fds)
        @rule(which=st.integers(0, 99))
        def fsync(self, which: int) -> None:
            """Any fsync commits, through a read-only descriptor too."""
            fd = sorted(self.fds)[which % len(self.fds)]
            os.fsync(fd)
            file = self.fds[fd].file
            if file.named:
                file.committed = True
            self.check_committed(file)

        @precondition(lambda self: self.fds)
        @rule(which=st.integers(0, 99))
        def close(self, which: int) -> None:
            self.close_fd(sorted(self.fds)[which % len(self.fds)])

        def close_fd(self, fd: int) -> None:
            handle = self.fds.pop(fd)
            os.close(fd)  # raises if the commit failed
            file = handle.file
            if handle.writable and file.named:
                file.committed = True
                self.check_committed(file)
            handle.fds -= 1
            if not handle.fds:
                file.handles -= 1
                self.forget(file)
                if not file.spooled:
                    self.wait_released(file)

        def wait_released(self, file: File) -> None:
            """The kernel releases a description a moment after its last close returns:
            wait until casfs has dropped its copy (then an open for writing without
            O_TRUNC is refused; until then one is harmless: it writes nothing)."""
            name = self.name_of(file)
            if name is None:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.close(os.open(uploads / name, os.O_WRONLY))
                except PermissionError:
                    return
                time.sleep(0.01)
            raise AssertionError(f"{name} still has its spool after its last release")

        @precondition(lambda self: self.names)
        @rule(source=NAMES, to=NAMES)
        def rename(self, source: str, to: str) -> None:
            if source not in self.names:
                return
            os.rename(uploads / source, uploads / to)
            if source != to:
                replaced = self.names.pop(to, None)
                if replaced is not None:
                    replaced.named = False
                    self.forget(replaced)
                self.names[to] = self.names.pop(source)

        @precondition(lambda self: self.names)
        @rule(name=NAMES)
        def unlink(self, name: str) -> None:
            if name not in self.names:
                return
            os.unlink(uploads / name)
            file = self.names.pop(name)
            file.named = False
            self.forget(file)

        @precondition(lambda self: not self.remounted)
        @rule()
        def remount(self) -> None:
            """Close everything and mount again: every name comes back with its bytes."""
            self.remounted = True
            for fd in sorted(self.fds):
                self.close_fd(fd)
            mounted.stop()
            mounted.start()
            assert sorted(os.listdir(uploads)) == sorted(self.names)
            for file in self.names.values():
                file.spooled = False
                self.check_committed(file)

        @invariant()
        def names_hold_their_bytes(self) -> None:
            assert sorted(os.listdir(uploads)) == sorted(self.names)
            for name, file in self.names.items():
                assert os.stat(uploads / name).st_size == len(file.data), name
                with open(uploads / name, "rb") as reader:
                    assert reader.read() == file.data, name

    run_state_machine_as_test(
        Descriptors,
        settings=settings(
            max_examples=10, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip
    assert is_mounted(mounted.mountpoint)
