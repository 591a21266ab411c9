"""What the kernel's FUSE path allows for a tree, with no casfs in it: a null file system
that mirrors a local directory.

``python -m bench.tree_ceiling --serve MNT SOURCE`` mounts a pyfuse3 file system showing
``SOURCE``'s tree, read-only: every name, size, mode and symlink target is read once at
start into memory; a file's bytes come from the local file (``os.pread``). It answers as
a file system of immutable content can at best: long entry and attribute timeouts,
``keep_cache`` on every open, no extended attributes (ENODATA), and nothing done at
flush or release. ``bench.treemount`` mounts it beside casfs and buildbox-fuse: its warm
figures are the floor any pyfuse3 file system reaches on this kernel, the request path's
cost with no work behind it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.fuse_ceiling import run_read_only
from bench.processes import FuseProcess

TIMEOUT = 24 * 3600.0


@dataclass
class Entry:
    """One name of the mirrored tree, with what ``lstat`` said of it at start."""

    path: str
    mode: int
    size: int
    mtime_ns: int
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)  # name -> inode


def scan(source: Path) -> list[Entry]:
    """The tree under ``source`` by inode number (index 1 is the root; 0 is unused)."""
    entries = [Entry("", 0, 0, 0)]

    def add(path: str) -> int:
        info = os.lstat(path)
        entry = Entry(path, info.st_mode, info.st_size, info.st_mtime_ns)
        entries.append(entry)
        inode = len(entries) - 1
        if stat.S_ISLNK(info.st_mode):
            entry.target = os.fsencode(os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            for name in sorted(os.listdir(path)):
                entry.children[os.fsencode(name)] = add(os.path.join(path, name))
        return inode

    add(str(source))
    return entries


def serve(mountpoint: Path, source: Path) -> None:
    """Mount the null tree at ``mountpoint`` until unmounted."""
    import pyfuse3

    entries = scan(source)

    class NullTree(pyfuse3.Operations):
        supports_dot_lookup = False

        def __init__(self) -> None:
            super().__init__()
            self.files: dict[int, int] = {}

        def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
            entry = entries[inode]
            attributes = pyfuse3.EntryAttributes()
            attributes.st_ino = inode
            attributes.st_mode = entry.mode
            attributes.st_size = entry.size
            attributes.st_nlink = 1
            attributes.st_mtime_ns = attributes.st_ctime_ns = entry.mtime_ns
            attributes.st_blocks = (entry.size + 511) // 512
            attributes.attr_timeout = attributes.entry_timeout = TIMEOUT
            return attributes

        async def getattr(
            self, inode: int, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            return self._attributes(inode)

        async def lookup(
            self, parent: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            inode = entries[parent].children.get(name)
            if inode is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attributes(inode)

        async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
            return entries[inode].target

        async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
            return inode

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            children = list(entries[fh].children.items())
            for index in range(start_id, len(children)):
                name, inode = children[index]
                if not pyfuse3.readdir_reply(token, name, self._attributes(inode), index + 1):
                    return

        async def open(
            self, inode: int, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            self.files[inode] = os.open(entries[inode].path, os.O_RDONLY)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return os.pread(self.files[fh], size, off)

        async def release(self, fh: int) -> None:
            pass  # the descriptor stays open: the tree is small and the mount short-lived

        async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
            raise pyfuse3.FUSEError(errno.ENODATA)

    run_read_only(NullTree(), mountpoint, "nulltree")


def null_tree(mountpoint: Path, source: Path, log: Path) -> FuseProcess:
    """The null tree of ``source`` mounted at ``mountpoint`` (a context manager)."""
    command = [sys.executable, "-m", "bench.tree_ceiling", "--serve", str(mountpoint)]
    return FuseProcess("null FUSE", [*command, str(source)], mountpoint, log)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "--serve":
        print("usage: python -m bench.tree_ceiling --serve MNT SOURCE", file=sys.stderr)
        return 2
    serve(Path(args[1]), Path(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
