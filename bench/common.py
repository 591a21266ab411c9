"""What the benchmarks share: scratch space, cold caches, timers, dd, statistics, tables.

Nothing here knows about a particular scenario or contender; ``bench.scenarios`` and
``bench.peers`` put these together. Throughput is in MB/s with MB = 10**6 bytes; latency
is in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MB = 1_000_000

# No session of a contender should last this long: a hung mount is killed after it.
STEP_TIMEOUT = 600.0


class BenchError(RuntimeError):
    """A benchmark could not run (as opposed to: it ran and missed a target)."""


# -- environment ----------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under ``$TMPDIR`` (or /var/tmp, which is disk, not tmpfs), removed
    at the end whatever happens."""
    base = os.environ.get("TMPDIR") or "/var/tmp"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as name:
        yield Path(name)


def require_root() -> None:
    """Cold-cache figures need ``/proc/sys/vm/drop_caches``, which only root may write."""
    if os.geteuid() != 0:
        raise BenchError("run as root: cold reads need /proc/sys/vm/drop_caches")


def drop_caches() -> None:
    """Write dirty pages back, then drop the page cache, dentries and inodes (all of the
    machine: the server's store and local files alike)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def bdi_readahead_kb(mountpoint: Path) -> int | None:
    """The kernel readahead (KiB) of the file system mounted at ``mountpoint``, from
    ``/sys/class/bdi/<major:minor>/read_ahead_kb``; None if it is not mounted."""
    device = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mountpoint):
                device = fields[2]  # the last match is the top of the stack
    if device is None:
        return None
    try:
        return int(Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text())
    except (OSError, ValueError):
        return None


def machine() -> str:
    """One line about the machine the figures come from."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / (1 << 20):.1f} GiB RAM"
                break
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, {memory}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def command_line() -> str:
    """How this benchmark was started, ready to paste."""
    return shlex.join([Path(sys.executable).name, *sys.orig_argv[1:]])


def write_random_file(path: Path, size: int, piece: int = 8 * MIB) -> Path:
    """A file of ``size`` random bytes (``os.urandom``), written in ``piece``-sized writes."""
    with open(path, "wb") as file:
        left = size
        while left:
            n = min(left, piece)
            file.write(os.urandom(n))
            left -= n
    return path


# -- timing ---------------------------------------------------------------------------------


class Stopwatch:
    """``with Stopwatch() as watch: ...``; then ``watch.seconds`` (``perf_counter``)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self.start


def read_file(path: Path, piece: int = MIB) -> int:
    """Open ``path``, read it to the end in ``piece``-sized reads into one buffer, close it;
    returns the number of bytes read. Time it from outside to get open-to-last-byte."""
    buffer = bytearray(piece)
    total = 0
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            total += count
    return total


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads), or by
    this process when None."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between the closest ranks."""
    if not values:
        raise ValueError("percentile of nothing")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """One figure over several runs: the median and the spread."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no runs to summarize")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, digits: int = 1) -> str:
        text = f"{self.median:.{digits}f}"
        if self.runs > 1:
            text += f" ({self.low:.{digits}f}-{self.high:.{digits}f})"
        return text


def digits_for(value: float) -> int:
    """Decimals enough to show a value with about three significant figures."""
    magnitude = abs(value)
    if magnitude >= 100:
        return 0
    if magnitude >= 10:
        return 1
    if magnitude >= 1:
        return 2
    return 3


# -- output ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, columns padded so it reads well as plain text."""
    widths = [len(cell) for cell in header]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header {len(header)}")
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def progress(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(message, file=sys.stderr, flush=True)
