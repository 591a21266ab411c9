"""Write benchmark: ``cp`` of a file into ``casfs mount``'s uploads/ beside the direct client.

Run as root::

    .venv/bin/python -m bench.write [--size 1G] [--runs N] [--quick]

Setup, once: a scratch directory, a ``casfs serve`` on 127.0.0.1 with its store there, a
file of ``--size`` random bytes. Each run then uploads *new* content (the file's first 8
bytes are rewritten with the run number) so that no contender finds the blob already
stored; the page cache is dropped before each contender, which starts from the same cold
file on the same disk.

- **casfs mount**: ``cp FILE MNT/main/uploads/NAME`` on a mount started for the run; the
  time is cp's whole run, open to close, and close returns once the blob is committed
  (spooled, hashed, FindMissingBlobs, resumable ByteStream Write).
- **direct client**: ``CasClient.upload_file`` in this process: hash the file, ask
  FindMissingBlobs, ByteStream Write from the file.

The table shows MB/s (10**6 bytes per second; higher is better), the median of the runs
with the spread, the ratio mount/direct and the target (at least 0.8x), and the mount's
peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

from bench.common import (
    MIB,
    Summary,
    command_line,
    drop_caches,
    machine,
    markdown_table,
    mb_per_s,
    progress,
    require_root,
    scratch_dir,
    write_random_file,
)
from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount, peak_rss_bytes
from tests.servers import CasfsServer

TARGET = 0.8


def _new_content(path: Path, run: int) -> None:
    with open(path, "r+b") as file:
        file.write(run.to_bytes(8, "little") + os.urandom(8))


def _direct_upload(endpoint: str, path: Path) -> tuple[float, Digest]:
    async def main() -> tuple[float, Digest]:
        async with CasClient(remote(endpoint)) as client:
            await client.capabilities()  # connected, as a mount would be
            started = time.perf_counter()
            digest = await client.upload_file(path)
            return time.perf_counter() - started, digest

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (1024)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 MiB, one run")
    parser.add_argument(
        "--spool", type=Path, help="the mount's --cache-dir (default: on the scratch disk)"
    )
    args = parser.parse_args(argv)
    size = (256 if args.quick else args.size) * MIB
    runs = 1 if args.quick else args.runs
    require_root()
    mount_rates: list[float] = []
    direct_rates: list[float] = []
    peaks: list[int] = []
    with scratch_dir("casfs-bench-write-") as root:
        source = write_random_file(root / "source", size)
        with CasfsServer(root / "store") as server:
            for run in range(runs):
                progress(f"run {run + 1}/{runs}: casfs mount")
                _new_content(source, 2 * run)
                spool = ["--cache-dir", str(args.spool / f"run-{run}")] if args.spool else []
                with CasfsMount(root / "mnt", "--remote", server.endpoint, *spool) as mount:
                    drop_caches()
                    target = mount.mountpoint / "main" / "uploads" / f"copy-{run}"
                    started = time.perf_counter()
                    subprocess.run(["cp", str(source), str(target)], check=True)
                    mount_rates.append(mb_per_s(size, time.perf_counter() - started))
                    peaks.append(peak_rss_bytes(mount.pid))
                progress(f"run {run + 1}/{runs}: direct client")
                _new_content(source, 2 * run + 1)
                drop_caches()
                seconds, _ = _direct_upload(server.endpoint, source)
                direct_rates.append(mb_per_s(size, seconds))
    mount, direct = Summary.of(mount_rates), Summary.of(direct_rates)
    ratio = mount.median / direct.median
    print(f"- machine: {machine()}")
    print(f"- command: `{command_line()}`")
    print(f"- file: {size // MIB} MiB of random data, new content each run; runs: {runs}")
    print(f"- the mount's spool: {args.spool or 'next to the mountpoint, on the scratch disk'}")
    print()
    print(
        markdown_table(
            ["scenario", "casfs mount", "direct client", "mount/direct", "target", "met?"],
            [
                [
                    "cp in, MB/s (higher is better)",
                    mount.show(),
                    direct.show(),
                    f"{ratio:.2f}x",
                    f">= {TARGET}x",
                    "yes" if ratio >= TARGET else "NO",
                ]
            ],
        )
    )
    print()
    print("Peak RSS of the mounts: " + ", ".join(f"{p // MIB} MiB" for p in peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
