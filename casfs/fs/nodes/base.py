"""What every node of the mount is: the ``Node`` base class, the ``Handle`` of an open file,
the ``Attributes`` a node reports, and the ``NodeError`` it refuses with. No pyfuse3 in here.

A node is a frozen value (its class and fields are its identity, which the inode table
keys on) and answers the requests made of it itself: ``lookup``, ``entries`` (readdir),
``attributes``, ``open``, ``xattrs`` and, where it is writable, ``create``, ``mkdir``,
``symlink``, ``unlink``, ``rmdir``, ``rename``, ``setattr``, ``readlink``. What it needs
of the mount (clients, block cache, catalog, upload trees, the kernel) comes in as the
``MountState`` argument (``state.py``). The defaults here are the answers of a node that
does not support the request: a read-only place refuses changes with ``state.refused()``,
a file refuses to be listed, a directory to be read.

Refusals are ``NodeError`` (an errno and no message: they are answers, not failures);
``fs/operations.py`` turns them, and every other error, into ``FUSEError``.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from casfs.cas.client import Chunk
from casfs.fs.nodes.errors import NO_ATTRIBUTE, NodeError

if TYPE_CHECKING:
    from casfs.fs.nodes.state import MountState


# Blobs never change, and the namespace only changes on remount: let the kernel cache both.
STATIC_TIMEOUT = 3600.0
BLOB_TIMEOUT = 24 * 3600.0
# Files under uploads/ change: the kernel asks again soon.
UPLOAD_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request (the kernel's uid and gid of the calling process)."""

    uid: int
    gid: int


@dataclass(slots=True)
class Attributes:
    """What ``stat`` shows of a node; the adapter adds the inode, owner and block size."""

    mode: int
    nlink: int = 1
    size: int = 0
    timeout: float = STATIC_TIMEOUT  # for the entry and its attributes alike
    mtime_ns: int | None = None  # None: the time the mount started

    @classmethod
    def directory(cls, mode: int = 0o555, timeout: float = STATIC_TIMEOUT) -> Attributes:
        return cls(mode=stat.S_IFDIR | mode, nlink=2, timeout=timeout)


@dataclass(frozen=True, slots=True)
class SetAttributes:
    """The changes of a setattr request; None leaves a field as it is."""

    size: int | None = None
    mode: int | None = None
    mtime_ns: int | None = None


def new_name(raw: bytes) -> str:
    """A name a change gives (uploads/ only): it must be UTF-8 (REAPI names are strings)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NodeError(errno.EINVAL) from None


class Handle:
    """An open file. Reading, writing and committing are refused unless a subclass can."""

    writable: ClassVar[bool] = False

    async def read(self, state: MountState, offset: int, size: int) -> Chunk:
        raise NodeError(errno.EBADF)

    async def write(self, state: MountState, offset: int, data: bytes) -> int:
        raise NodeError(errno.EBADF)

    async def commit(self, state: MountState, *, any_descriptor: bool) -> None:
        """``close()`` (``any_descriptor`` False) or ``fsync()`` (True): nothing to do."""

    async def release(self, state: MountState) -> None:
        """The last reference to the handle is gone: nothing to clean up."""


@dataclass(frozen=True, slots=True)
class Opened:
    """An open's answer: the handle, and how the kernel should cache the file's pages."""

    handle: Handle
    keep_cache: bool = False
    direct_io: bool = False


class Node:
    """A file, directory or symlink of the mount. Subclasses are frozen dataclasses."""

    __slots__ = ()

    # Static nodes get an inode when the mount starts and keep it (see ``InodeTable``).
    pinned: ClassVar[bool] = False

    # -- reading --------------------------------------------------------------------------

    def attributes(self, state: MountState) -> Attributes:
        """What ``stat`` shows. Raises ``NodeError(ENOENT)`` if the node is gone."""
        raise NotImplementedError

    def static_children(self, state: MountState) -> list[tuple[str, Node]]:
        """The entries a directory always has (pinned when the mount starts)."""
        return []

    async def lookup(self, state: MountState, name: str, caller: Caller) -> Node:
        """The child called ``name``; ``NodeError(ENOENT)`` if there is none."""
        raise NodeError(errno.ENOENT)

    def entries(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        """The entries of a directory as ``caller`` may list them (for readdir)."""
        raise NodeError(errno.ENOTDIR)

    async def listing(self, state: MountState, caller: Caller) -> list[tuple[str, Node]]:
        """The entries when a directory is opened for reading: ``entries``, unless the
        node must fetch something first (a tree's Directory)."""
        return self.entries(state, caller)

    async def open(self, state: MountState, inode: int, flags: int) -> Opened:
        raise NodeError(errno.EISDIR)

    def readlink(self, state: MountState) -> str:
        raise NodeError(errno.EINVAL)

    async def getxattr(self, state: MountState, name: bytes, caller: Caller) -> bytes:
        value = (await self.xattrs(state)).get(name)
        if value is None:
            raise NodeError(NO_ATTRIBUTE)
        return value

    async def listxattr(self, state: MountState) -> list[bytes]:
        return list(await self.xattrs(state))

    async def xattrs(self, state: MountState) -> dict[bytes, bytes]:
        """The extended attributes (``user.casfs.*``) and their values."""
        return {}

    async def setxattr(self, state: MountState, name: bytes, value: bytes) -> None:
        """Set an extended attribute: not supported unless a node says so."""
        raise NodeError(errno.ENOTSUP)

    async def removexattr(self, state: MountState, name: bytes) -> None:
        raise NodeError(errno.ENOTSUP)

    # -- changing (refused in read-only places) -------------------------------------------

    async def setattr(self, state: MountState, changes: SetAttributes) -> None:
        raise state.refused()

    async def create(
        self, state: MountState, name: bytes, mode: int, flags: int
    ) -> tuple[Opened, Node]:
        state.writable()
        new_name(name)
        raise state.refused()

    async def mkdir(self, state: MountState, name: bytes, mode: int) -> Node:
        raise state.refused()

    async def symlink(self, state: MountState, name: bytes, target: str) -> Node:
        raise state.refused()

    async def unlink(self, state: MountState, name: bytes) -> None:
        raise state.refused()

    async def rmdir(self, state: MountState, name: bytes) -> None:
        raise state.refused()

    async def rename(
        self, state: MountState, name: bytes, new_parent: Node, new_name: bytes, flags: int
    ) -> None:
        raise state.refused()
