"""Re-read after a remount: casfs with its disk cache, rclone ``--vfs-cache-mode full``
with its cache directory, and the null pyfuse3 file system's cold read (the ceiling).

``python -m bench.remount [--size 1G] [--runs 3]`` (root: the page cache is dropped).
For casfs and rclone full, each run: a fresh cache directory, a mount, a read of the
whole blob (cold: it fills the cache), wait until casfs has written its blocks behind the
read, unmount, drop the page cache, mount again with the same cache directory, and time a
read of the whole blob in 1 MiB reads (MB/s = 10^6 B/s). The null file system's cold
read is ``bench.fuse_ceiling``'s. A contender that cannot run here (rclone missing) is
shown as ``missing``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from bench.common import (
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
from bench.fuse_ceiling import measure as ceiling
from bench.processes import FuseProcess, HttpServer
from casfs.cas.client import CasClient
from casfs.config import parse_size
from casfs.fs.status import read_status
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer


def _upload(endpoint: str, path: Path) -> str:
    async def main() -> str:
        async with CasClient(remote(endpoint)) as client:
            digest = await client.upload_file(path)
        return f"{digest.hash}/{digest.size}"

    return trio.run(main)


def _timed_read(path: Path, size: int) -> float:
    with Stopwatch() as watch:
        read = read_file(path)
    if read != size:
        raise RuntimeError(f"{path}: read {read} bytes of {size}")
    return mb_per_s(size, watch.seconds)


def _fill(mountpoint: Path, args: Sequence[str], name: str, size: int) -> bool:
    """One mount that reads the whole blob and waits until its writes behind are done;
    whether it fetched nothing from the remote (every block came from the disk)."""
    with CasfsMount(mountpoint, *args) as mount:
        read_file(mountpoint / "main" / "blobs" / name)
        deadline = time.monotonic() + 600
        last: dict[str, int] = {}
        while True:  # the writes behind are done once the disk's figures stop moving
            status = read_status(mountpoint)
            if status["disk_cache"] == last:
                return bool(status["cas"]["fetched_bytes"] == 0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"casfs never wrote its blocks: {mount.log_text()}")
            last = status["disk_cache"]
            time.sleep(1.5)  # the status is rendered at most once a second


def casfs_remount(root: Path, endpoint: str, name: str, size: int) -> float:
    """A fresh disk cache filled by mounts that read the blob until one needs no remote
    read (a fast cold read outruns the disk: blocks that do not fit the write queue are
    not written, and the next mount fetches only those), then the timed re-read."""
    disk, mountpoint = root / "casfs-disk", root / "casfs-mnt"
    shutil.rmtree(disk, ignore_errors=True)
    mountpoint.mkdir(exist_ok=True)
    args = ("--remote", endpoint, "--disk-cache", str(disk), "--disk-cache-size", f"{2 * size}")
    rounds = 1
    while not _fill(mountpoint, args, name, size) and rounds < 5:
        rounds += 1
    progress(f"  casfs: {rounds} mount(s) read the blob before one fetched nothing")
    drop_caches()
    with CasfsMount(mountpoint, *args):
        figure = _timed_read(mountpoint / "main" / "blobs" / name, size)
        fetched = read_status(mountpoint)["cas"]["fetched_bytes"]
        if fetched:
            progress(f"  warning: the re-read fetched {fetched} bytes")
    return figure


def rclone_remount(root: Path, rclone: str, url: str, size: int) -> float:
    cache, mountpoint = root / "rclone-cache", root / "rclone-mnt"
    shutil.rmtree(cache, ignore_errors=True)
    mountpoint.mkdir(exist_ok=True)
    command = [rclone, "mount", ":http:", str(mountpoint), "--http-url", url, "--read-only"]
    command += ["--vfs-cache-mode", "full", "--cache-dir", str(cache)]
    with FuseProcess("rclone full", command, mountpoint, root / "rclone-mount.log"):
        read_file(mountpoint / "blob")
    drop_caches()
    with FuseProcess("rclone full", command, mountpoint, root / "rclone-mount.log"):
        return _timed_read(mountpoint / "blob", size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remount", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    require_root()
    size: int = args.size
    with scratch_dir("casfs-remount-") as root:
        served = root / "served"
        served.mkdir()
        blob = write_random_file(served / "blob", size)
        figures: dict[str, list[float]] = {"casfs": [], "rclone full": []}
        missing: dict[str, str] = {}
        with CasfsServer(root / "store") as server:
            name = _upload(server.endpoint, blob)
            rclone = shutil.which("rclone")
            http = HttpServer(rclone, served, root / "serve.log") if rclone else None
            if http is None:
                missing["rclone full"] = "rclone is not installed"
            runs: list[tuple[str, Callable[[], float]]] = [
                ("casfs", lambda: casfs_remount(root, server.endpoint, name, size))
            ]
            with http if http is not None else contextlib.nullcontext():
                if http is not None and rclone is not None:
                    url = http.url
                    runs.append(("rclone full", lambda: rclone_remount(root, rclone, url, size)))
                for run in range(args.runs):
                    for key, measure in runs if run % 2 == 0 else runs[::-1]:
                        progress(f"run {run + 1}/{args.runs}: {key}")
                        figures[key].append(measure())
        progress("null FUSE (bench.fuse_ceiling)")
        (root / "ceiling").mkdir()
        null_table = ceiling(root / "ceiling", size, args.runs)
    rows = []
    casfs = Summary.of(figures["casfs"])
    for key in ("casfs", "rclone full"):
        if key in missing:
            rows.append([key, f"missing ({missing[key]})", ""])
            continue
        summary = Summary.of(figures[key])
        rows.append([key, summary.show(0), f"{casfs.median / summary.median:.2f}x"])
    print(markdown_table(["re-read after remount, MB/s", "median (min-max)", "casfs/it"], rows))
    print()
    print(null_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
