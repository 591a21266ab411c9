"""Read benchmark: a blob read through ``casfs mount``, by the direct client, and from a file.

Run as root (cold reads drop the page cache)::

    .venv/bin/python -m bench.read [--size 1G] [--runs N] [--random N] [--quick]

Setup, once: a scratch directory under ``$TMPDIR`` or /var/tmp, a ``casfs serve`` on
127.0.0.1 with its store there, a file of ``--size`` random bytes (``os.urandom`` in 8 MiB
writes) uploaded with ``CasClient.upload_file``. That file is also the *local file*
contender: same disk, same size, same bytes as the server's copy.

The three contenders read the same blob from the same server:

- **casfs mount**: ``casfs mount MNT --remote grpc://127.0.0.1:PORT --cache-size 512M`` in
  its own process; the blob is ``MNT/main/blobs/<hash>/<size>``.
- **direct client**: a ``CasClient`` in this process (trio), straight to the same server.
- **local file**: the uploaded file on the local disk.

*Cold* means: ``sync; echo 3 > /proc/sys/vm/drop_caches`` right before the measurement of
each contender (this drops the server's store pages too, so every contender starts from
disk), and for the mount a fresh ``casfs mount`` process, so its block cache is empty and
nothing has been looked up yet. drop_caches also evicts the file-backed code pages of the
running processes (libpython, grpc's shared library, ...): the server and the mount fault
them back in on their first request after it, which shows in the first-byte figures.

Scenarios, each repeated ``--runs`` times (every run does all of them, contenders in the
order mount, direct, local); the table shows the median and the spread (min-max):

1. **first byte** (ms). Mount: fresh mount, caches dropped, then ``os.open(blob)`` +
   ``os.read(fd, 1)`` timed together, so it includes the four LOOKUPs (instance,
   ``blobs``, hash, size; the last one asks the server FindMissingBlobs), OPEN and the first
   READ (one block fetched by a ranged ByteStream Read). The mount connected to the server
   when it started, as a mounted file system would have. Direct: a fresh ``CasClient``
   whose channel is connected by a ``capabilities()`` call, caches dropped, then one
   ``read_range(digest, 0, 1)`` timed (one ranged ByteStream Read from a connected channel,
   plus the hop to a worker thread). Local: caches dropped, ``os.open`` + ``os.read(fd, 1)``.
2. **cold sequential read** (MB/s, MB = 10**6 bytes). Mount: fresh mount, caches dropped,
   ``dd if=BLOB of=/dev/null bs=1M``, timed by dd itself (from just after its open to the
   end of the copy). Direct: connected client, caches dropped, ``async for chunk in
   client.stream(digest)`` counting bytes, timed around the loop (note that ``stream`` also
   checks the sha256 of the whole blob on the way). Local: caches dropped, the same ``dd``
   on the local file. The CPU time the mount, the server and this process use during the
   cold read is printed under the table.
3. **warm re-read** (MB/s). Right after the cold read, the same ``dd`` again: through the
   same mount (the kernel keeps the blob's pages, ``keep_cache``), and on the local file.
   The direct column is a second ``stream`` right after the cold one: the client caches
   nothing, but the server's store file is now in the page cache.
4. **random 128 KiB reads** (ms, p50 and p99). ``--random`` distinct 128 KiB-aligned
   offsets in random order, the same offsets for every contender within a run (new ones
   each run). Mount: fresh mount, caches dropped, the blob opened (not timed), then each
   ``os.pread(fd, 128 KiB, offset)`` timed. Direct: connected client, caches dropped, each
   ``read_range(digest, offset, 128 KiB)`` timed. Local: caches dropped, each ``os.pread``
   timed. The bytes read by all three are compared afterwards.

Ratios are of the medians. For ms rows lower is better and a ratio below 1 means the mount
is faster; for MB/s rows higher is better and a ratio above 1 means the mount is faster.
Targets (from the issue): cold sequential mount/direct >= 0.8, warm re-read mount/local
>= 0.9, first byte through the mount < 20 ms, random 128 KiB p50 mount/direct <= 1.5.

The exit code is 0 when everything ran, whether or not the targets were met, and 1 when
something failed to run (the mount's and server's logs are printed then). The server and
every mount are stopped and the scratch directory removed in every case.

``--quick``: a 256 MiB blob, one run, 50 random reads; well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.common import (
    GIB,
    KIB,
    MIB,
    BenchError,
    Stopwatch,
    Summary,
    bdi_readahead_kb,
    command_line,
    cpu_seconds,
    dd_read,
    digits_for,
    drop_caches,
    log_tails,
    machine,
    markdown_table,
    mb_per_s,
    percentile,
    progress,
    require_root,
    scratch_dir,
    write_random_file,
)
from casfs.cas.client import CasClient
from casfs.config import ConfigError, parse_size
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount, peak_rss_bytes
from tests.servers import CasfsServer

RANDOM_READ = 128 * KIB
MOUNT_CACHE = "512M"
# What casfs mount sets the kernel readahead to (its --readahead default).
EXPECTED_READAHEAD_KB = 1024

MOUNT, DIRECT, LOCAL = "mount", "direct", "local"
CONTENDERS = (MOUNT, DIRECT, LOCAL)


@dataclass
class Bench:
    """The blob, where it lives, and everything measured so far."""

    root: Path
    server: CasfsServer
    digest: Digest
    local: Path
    random_reads: int
    mounts: int = 0
    rss: list[tuple[str, int]] = field(default_factory=list)
    readahead: list[int | None] = field(default_factory=list)
    # CPU seconds (and wall seconds) spent during each cold sequential read, per run
    cpu: dict[str, list[float]] = field(default_factory=dict)
    # results[row][contender]: one figure per run
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.digest.size

    def record(self, row: str, contender: str, value: float) -> None:
        self.results.setdefault(row, {}).setdefault(contender, []).append(value)

    def record_cpu(self, what: str, seconds: float) -> None:
        self.cpu.setdefault(what, []).append(seconds)

    def mount_args(self) -> tuple[str, ...]:
        return ("--remote", self.server.endpoint, "--cache-size", MOUNT_CACHE)

    @contextlib.contextmanager
    def fresh_mount(self, label: str) -> Iterator[tuple[Path, int]]:
        """A new ``casfs mount`` (empty block cache, nothing looked up); yields the blob's
        path in it and the mount's pid. Unmounts on the way out, whatever happens; records
        the peak RSS."""
        self.mounts += 1
        mountpoint = self.root / f"mnt{self.mounts}"
        with CasfsMount(mountpoint, *self.mount_args()) as mount:
            self.readahead.append(wait_for_readahead(mountpoint))
            yield (
                mountpoint / "main" / "blobs" / self.digest.hash / str(self.digest.size),
                mount.pid,
            )
            self.rss.append((f"mount {self.mounts} ({label})", peak_rss_bytes(mount.pid)))

    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def client(self) -> CasClient:
        return CasClient(remote(self.server.endpoint))


def wait_for_readahead(mountpoint: Path, timeout: float = 5.0) -> int | None:
    """casfs mount raises the kernel readahead just after the kernel's INIT, a moment after
    it says "mounted": wait for it so that no measurement starts with the default."""
    deadline = time.monotonic() + timeout
    value = bdi_readahead_kb(mountpoint)
    while value != EXPECTED_READAHEAD_KB and time.monotonic() < deadline:
        time.sleep(0.02)
        value = bdi_readahead_kb(mountpoint)
    if value != EXPECTED_READAHEAD_KB:
        progress(f"  warning: readahead of {mountpoint} is {value} KiB, not 1024")
    return value


def timed_open_read1(path: Path) -> tuple[float, bytes]:
    """Seconds for ``os.open`` + ``os.read(fd, 1)``; the close is not timed."""
    with Stopwatch() as watch:
        fd = os.open(path, os.O_RDONLY)
        data = os.read(fd, 1)
    os.close(fd)
    return watch.seconds, data


def timed_preads(path: Path, offsets: Sequence[int]) -> tuple[list[float], list[bytes]]:
    """Open ``path`` (not timed), then time each ``os.pread`` of 128 KiB."""
    times: list[float] = []
    chunks: list[bytes] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            start = time.perf_counter()
            data = os.pread(fd, RANDOM_READ, offset)
            times.append(time.perf_counter() - start)
            chunks.append(data)
    finally:
        os.close(fd)
    return times, chunks


# -- scenarios ------------------------------------------------------------------------------


def first_byte(bench: Bench, expected: bytes) -> None:
    with bench.fresh_mount("first byte") as (blob, _):
        drop_caches()
        seconds, data = timed_open_read1(blob)
    check(data == expected, f"first byte through the mount: {data!r}, not {expected!r}")
    bench.record("first", MOUNT, seconds)

    async def direct() -> tuple[float, bytes]:
        async with bench.client() as client:
            await client.capabilities()
            drop_caches()
            with Stopwatch() as watch:
                data = await client.read_range(bench.digest, 0, 1)
            return watch.seconds, data

    seconds, data = trio.run(direct)
    check(data == expected, f"first byte by the client: {data!r}, not {expected!r}")
    bench.record("first", DIRECT, seconds)

    drop_caches()
    seconds, data = timed_open_read1(bench.local)
    check(data == expected, "first byte of the local file changed")
    bench.record("first", LOCAL, seconds)


def sequential(bench: Bench) -> None:
    server = bench.server_pid()
    with bench.fresh_mount("sequential") as (blob, pid):
        drop_caches()
        before = cpu_seconds(pid), cpu_seconds(server)
        cold = dd_read(blob, bench.size)
        bench.record_cpu("mount: mount process", cpu_seconds(pid) - before[0])
        bench.record_cpu("mount: server", cpu_seconds(server) - before[1])
        bench.record_cpu("mount: dd", cold)
        warm = dd_read(blob, bench.size)
    bench.record("cold", MOUNT, mb_per_s(bench.size, cold))
    bench.record("warm", MOUNT, mb_per_s(bench.size, warm))

    async def stream(client: CasClient, cold: bool) -> float:
        received = 0
        before = cpu_seconds(), cpu_seconds(server)
        with Stopwatch() as watch:
            async for chunk in client.stream(bench.digest):
                received += len(chunk)
        check(received == bench.size, f"client stream: {received} of {bench.size} bytes")
        if cold:
            bench.record_cpu("direct: client", cpu_seconds() - before[0])
            bench.record_cpu("direct: server", cpu_seconds(server) - before[1])
            bench.record_cpu("direct: stream", watch.seconds)
        return watch.seconds

    async def direct() -> tuple[float, float]:
        async with bench.client() as client:
            await client.capabilities()
            drop_caches()
            return await stream(client, cold=True), await stream(client, cold=False)

    cold, warm = trio.run(direct)
    bench.record("cold", DIRECT, mb_per_s(bench.size, cold))
    bench.record("warm", DIRECT, mb_per_s(bench.size, warm))

    drop_caches()
    cold = dd_read(bench.local, bench.size)
    warm = dd_read(bench.local, bench.size)
    bench.record("cold", LOCAL, mb_per_s(bench.size, cold))
    bench.record("warm", LOCAL, mb_per_s(bench.size, warm))


def random_reads(bench: Bench, rng: random.Random) -> None:
    slots = bench.size // RANDOM_READ
    offsets = [slot * RANDOM_READ for slot in rng.sample(range(slots), bench.random_reads)]

    with bench.fresh_mount("random reads") as (blob, _):
        drop_caches()
        mount_times, mount_data = timed_preads(blob, offsets)

    async def direct() -> tuple[list[float], list[bytes]]:
        times: list[float] = []
        chunks: list[bytes] = []
        async with bench.client() as client:
            await client.capabilities()
            drop_caches()
            for offset in offsets:
                start = time.perf_counter()
                data = await client.read_range(bench.digest, offset, RANDOM_READ)
                times.append(time.perf_counter() - start)
                chunks.append(data)
        return times, chunks

    direct_times, direct_data = trio.run(direct)

    drop_caches()
    local_times, local_data = timed_preads(bench.local, offsets)

    for offset, expected, by_mount, by_client in zip(
        offsets, local_data, mount_data, direct_data, strict=True
    ):
        check(len(expected) == RANDOM_READ, f"local pread at {offset}: {len(expected)} bytes")
        check(by_mount == expected, f"mount pread at {offset}: wrong bytes ({len(by_mount)})")
        check(by_client == expected, f"read_range at {offset}: wrong bytes ({len(by_client)})")
    for contender, times in ((MOUNT, mount_times), (DIRECT, direct_times), (LOCAL, local_times)):
        bench.record("p50", contender, percentile(times, 50))
        bench.record("p99", contender, percentile(times, 99))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


# -- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str  # "ms" (lower is better) or "MB/s" (higher is better)
    target: str
    met: Callable[[dict[str, float]], bool] | None  # on the medians


ROWS = (
    Row(
        "first",
        "first byte, ms (lower is better)",
        "ms",
        "mount < 20 ms",
        lambda m: m[MOUNT] < 20,
    ),
    Row(
        "cold",
        "cold sequential read, MB/s (higher is better)",
        "MB/s",
        "mount/direct >= 0.8",
        lambda m: m[MOUNT] / m[DIRECT] >= 0.8,
    ),
    Row(
        "warm",
        "warm re-read, MB/s (higher is better)",
        "MB/s",
        "mount/local >= 0.9",
        lambda m: m[MOUNT] / m[LOCAL] >= 0.9,
    ),
    Row(
        "p50",
        "random 128 KiB read p50, ms (lower is better)",
        "ms",
        "mount/direct <= 1.5",
        lambda m: m[MOUNT] / m[DIRECT] <= 1.5,
    ),
    Row("p99", "random 128 KiB read p99, ms (lower is better)", "ms", "-", None),
)


def table(bench: Bench) -> str:
    rows = []
    for row in ROWS:
        scale = 1000.0 if row.unit == "ms" else 1.0
        summaries = {
            contender: Summary.of([value * scale for value in bench.results[row.key][contender]])
            for contender in CONTENDERS
        }
        medians = {contender: summary.median for contender, summary in summaries.items()}
        cells = [row.title]
        for contender in CONTENDERS:
            cells.append(summaries[contender].show(digits_for(medians[contender])))
        cells.append(f"{medians[MOUNT] / medians[DIRECT]:.2f}x")
        cells.append(f"{medians[MOUNT] / medians[LOCAL]:.2f}x")
        cells.append(row.target)
        cells.append("-" if row.met is None else "yes" if row.met(medians) else "NO")
        rows.append(cells)
    header = [
        "scenario",
        "casfs mount",
        "direct client",
        "local file",
        "mount/direct",
        "mount/local",
        "target",
        "met?",
    ]
    return markdown_table(header, rows)


def cpu_line(bench: Bench, wall: str, processes: Sequence[str]) -> str:
    def median(key: str) -> float:
        return Summary.of(bench.cpu[key]).median

    used = ", ".join(f"{key.split(': ')[1]} {median(key):.2f} s" for key in processes)
    return f"{median(wall):.2f} s of wall time: {used}"


def report(bench: Bench, runs: int, timings: dict[str, float]) -> str:
    size = bench.size
    human = f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"
    readahead = sorted({str(value) for value in bench.readahead})
    lines = [
        "# casfs read benchmark",
        "",
        f"- machine: {machine()}",
        f"- command: `{command_line()}`",
        f"- blob: {human} ({size} bytes) of random data, sha256 {bench.digest.hash}",
        f"- mount: `casfs mount MNT {' '.join(bench.mount_args())}`, "
        f"kernel readahead {'/'.join(readahead)} KiB",
        f"- runs: {runs} (cells: median, and (min-max) over the runs); random reads: "
        f"{bench.random_reads} x 128 KiB per contender per run",
        "",
        table(bench),
        "",
        "Ratios are of the medians. ms rows: lower is better, a ratio below 1 means the mount "
        "is faster.",
        "MB/s rows (MB = 10^6 bytes): higher is better, a ratio above 1 means the mount is faster.",
        "Warm re-read, direct client: a second stream right after the cold one (the client "
        "caches nothing; the server's store file is in the page cache).",
        "",
        "CPU seconds used during the cold sequential read (medians over the runs):",
        "- through the mount, "
        + cpu_line(bench, "mount: dd", ("mount: mount process", "mount: server")),
        "- direct client, "
        + cpu_line(bench, "direct: stream", ("direct: client", "direct: server")),
        "",
        "Peak RSS (VmHWM) of each casfs mount process:",
    ]
    lines += [f"- {label}: {rss / MIB:.0f} MiB" for label, rss in bench.rss]
    lines += [
        "",
        "Wall time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()),
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.read",
        description="Read a blob through casfs mount, by the direct client and from a local "
        "file; print one table of the figures and their ratios.",
    )
    parser.add_argument("--size", help="blob size (default 1G; 256M with --quick)")
    parser.add_argument("--runs", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--random", type=int, help="random 128 KiB reads per run (default 200; 50 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the random offsets")
    parser.add_argument("--quick", action="store_true", help="256 MiB, 1 run, 50 random reads")
    args = parser.parse_args(argv)
    try:
        args.size = parse_size(args.size or ("256M" if args.quick else "1G"))
    except ConfigError as error:
        parser.error(str(error))
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.random is None:
        args.random = 50 if args.quick else 200
    if args.size < RANDOM_READ * max(args.random, 1):
        parser.error(f"--size must hold --random distinct 128 KiB pieces ({args.random})")
    if args.runs < 1 or args.random < 1:
        parser.error("--runs and --random must be at least 1")
    return args


def progress_run(bench: Bench) -> None:
    """This run's figures, on stderr as they come."""
    for row in ROWS:
        scale = 1000.0 if row.unit == "ms" else 1.0
        values = bench.results[row.key]
        figures = ", ".join(f"{c} {values[c][-1] * scale:.1f}" for c in CONTENDERS)
        progress(f"  {row.key} ({row.unit}): {figures}")


def run(args: argparse.Namespace, root: Path, timings: dict[str, float]) -> None:
    started = time.monotonic()
    local = root / "blob.local"
    progress(f"writing {args.size} random bytes to {local}")
    write_random_file(local, args.size)
    with open(local, "rb") as file:
        first = file.read(1)
    with CasfsServer(root / "store") as server:

        async def upload() -> Digest:
            async with CasClient(remote(server.endpoint)) as client:
                return await client.upload_file(local)

        progress(f"uploading to casfs serve at {server.endpoint}")
        digest = trio.run(upload)
        bench = Bench(root, server, digest, local, args.random)
        timings["setup"] = time.monotonic() - started
        rng = random.Random(args.seed)
        for number in range(1, args.runs + 1):
            progress(f"run {number}/{args.runs}: first byte")
            first_byte(bench, first)
            progress(f"run {number}/{args.runs}: cold sequential read and warm re-read")
            sequential(bench)
            progress(f"run {number}/{args.runs}: {args.random} random 128 KiB reads")
            random_reads(bench, rng)
            progress_run(bench)
        timings["measurements"] = time.monotonic() - started - timings["setup"]
    timings["total"] = time.monotonic() - started
    print(report(bench, args.runs, timings), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_root()
        with scratch_dir("casfs-bench-read-") as root:
            try:
                run(args, root, {})
            except BaseException:
                tails = log_tails(root)
                if tails:
                    progress(tails)
                raise
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    except Exception:
        progress(traceback.format_exc())
        progress("bench.read: FAILED to run (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
