"""What the kernel's FUSE path allows, with no casfs in it: a null file system.

``python -m bench.fuse_ceiling [--size 1G] [--runs 3]`` mounts a pyfuse3 file system that
serves one file of ``--size`` bytes from a 1 MiB buffer in memory (``keep_cache``, long
timeouts, readahead raised to 1 MiB, as casfs mounts) and reads it with the same reads
as ``python -m bench``, beside a local file of the same size: cold (page cache dropped)
and warm (the second read, all from the page cache). The warm figure is the ceiling of
any FUSE file system's warm re-read on this kernel, whatever its server does.

``python -m bench.fuse_ceiling --serve MNT --size N`` is the file system alone (the
benchmark runs it so, in a subprocess).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    MIB,
    Stopwatch,
    Summary,
    drop_caches,
    markdown_table,
    mb_per_s,
    progress,
    read_file,
    require_root,
    scratch_dir,
    write_random_file,
)
from bench.processes import FuseProcess
from casfs.config import parse_size
from casfs.fs.mountpoint import set_readahead

FILE_INODE = 2


def serve(mountpoint: Path, size: int) -> None:
    """Mount the null file system at ``mountpoint`` until unmounted."""
    import pyfuse3

    buffer = memoryview(os.urandom(MIB))

    class NullFile(pyfuse3.Operations):
        async def getattr(
            self, inode: int, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            attributes = pyfuse3.EntryAttributes()
            attributes.st_ino = inode
            attributes.attr_timeout = attributes.entry_timeout = 3600
            attributes.st_blksize = MIB
            if inode == pyfuse3.ROOT_INODE:
                attributes.st_mode = stat.S_IFDIR | 0o755
            else:
                attributes.st_mode = stat.S_IFREG | 0o444
                attributes.st_size = size
            return attributes

        async def lookup(
            self, parent: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            if parent != pyfuse3.ROOT_INODE or name != b"file":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(FILE_INODE)

        async def open(
            self, inode: int, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh: int, off: int, length: int) -> memoryview | bytes:  # type: ignore[override]
            # A short answer would be taken for the end of the file, so a read that
            # crosses the end of the 1 MiB pattern (a readahead window that is not
            # aligned) wraps around it; requests are at most 1 MiB, so once at most.
            start = off % MIB
            wanted = max(0, min(length, size - off))
            if start + wanted <= MIB:
                return buffer[start : start + wanted]
            return bytes(buffer[start:]) + bytes(buffer[: start + wanted - MIB])

    run_read_only(NullFile(), mountpoint, "nullfs")


def run_read_only(operations: object, mountpoint: Path, fsname: str) -> None:
    """Mount ``operations`` (a ``pyfuse3.Operations``) read-only at ``mountpoint`` and
    answer requests until it is unmounted."""
    import pyfuse3
    import trio

    assert isinstance(operations, pyfuse3.Operations)
    pyfuse3.init(operations, str(mountpoint), {f"fsname={fsname}", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


def null_fuse(mountpoint: Path, size: int, log: Path) -> FuseProcess:
    """The null file system mounted at ``mountpoint`` (a context manager), readahead as
    casfs sets it."""
    command = [sys.executable, "-m", "bench.fuse_ceiling", "--serve", str(mountpoint)]
    return FuseProcess("null FUSE", [*command, "--size", str(size)], mountpoint, log)


def read_cold_and_warm(path: Path, size: int) -> dict[str, float]:
    """MB/s of a read of ``path`` after ``drop_caches`` ("cold"), then again ("warm")."""
    drop_caches()
    figures = {}
    for phase in ("cold", "warm"):
        with Stopwatch() as watch:
            read = read_file(path)
        if read != size:
            raise RuntimeError(f"{path}: read {read} bytes of {size}")
        figures[phase] = mb_per_s(size, watch.seconds)
    return figures


def measure(root: Path, size: int, runs: int) -> str:
    local = write_random_file(root / "local", size)
    mountpoint = root / "mnt"
    figures: dict[tuple[str, str], list[float]] = {}
    with null_fuse(mountpoint, size, root / "log"):
        set_readahead(mountpoint, 1024)
        for run in range(runs):
            progress(f"run {run + 1}/{runs}")
            for name, path in (("null FUSE", mountpoint / "file"), ("local file", local)):
                for phase, figure in read_cold_and_warm(path, size).items():
                    figures.setdefault((phase, name), []).append(figure)
    rows = []
    for phase in ("cold", "warm"):
        fuse = Summary.of(figures[(phase, "null FUSE")])
        disk = Summary.of(figures[(phase, "local file")])
        rows.append(
            [f"{phase} read, MB/s", fuse.show(0), disk.show(0), f"{fuse.median / disk.median:.2f}x"]
        )
    return markdown_table(["", "null FUSE (pyfuse3)", "local file", "FUSE/local"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuse_ceiling", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=Path, metavar="MNT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.size)
        return 0
    require_root()
    with scratch_dir("casfs-fuse-ceiling-") as root:
        print(measure(root, args.size, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
