"""The scenarios: what is timed, in the same way for every contender.

Each scenario opens a fresh session of a contender (a new mount process with empty caches
for a mount), drops the kernel's caches (``sync; echo 3 > /proc/sys/vm/drop_caches``: the
page cache of every file system, the servers' stores included) and times one thing. It
returns its figures by metric key, in the units of the table: ms, MB/s (10**6 bytes per
second), s, MiB. The bytes read are checked against the local copy; a mismatch fails that
contender's scenario, not the run.

- ``first``: open + read of 1 byte of the blob (ms).
- ``sequential``: ``cold``, open to last byte in 1 MiB reads (MB/s); then ``warm``, the
  same again through the same session. For the direct client, ``stream`` of the whole blob
  (it also checks the sha256 on the way); warm is a second stream (the client caches
  nothing, the server's store is in the page cache by then). ``cpu`` is the CPU seconds the
  mount process used during the cold read.
- ``random 4 KiB`` / ``random 128 KiB``: distinct aligned offsets in random order, the same
  for every contender in a run; the file is opened untimed, then each pread is timed (p50,
  p99 and the worst, ms: a mount that fetches the whole file at the first read, as
  buildbox-fuse does, shows it only there). The direct client times each ``read_range``.
- ``small``: every small blob read whole, one after the other, open to close (s). The
  direct client reads them all with ``batch_read`` (the wire's best, not a file system's).
  ``small_cpu`` is the mount process's CPU per blob meanwhile (ms): steadier than the
  time on a shared machine.
- ``cp``: ``cp`` of a file of the blob's size into the mount (casfs: ``uploads/``, close
  returns once the blob is stored), or ``upload_file`` by the direct client, or ``cp`` on
  the local disk; new content every time (MB/s).

Every scenario of a mount also reports the peak RSS (VmHWM) of its mount process (MiB),
read just before it is unmounted.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import KIB, MIB, BenchError, cpu_seconds, drop_caches, mb_per_s, percentile
from bench.peers import Contender
from bench.processes import peak_rss
from bench.sessions import Data, Session


@dataclass
class Reference:
    """What the contenders must return, read from the local copy, and the cp source."""

    data: Data
    first: bytes
    small: list[bytes]
    source: Path
    copies: int = 0

    @classmethod
    def of(cls, data: Data, source: Path) -> Reference:
        with open(data.blob_file, "rb") as file:
            first = file.read(1)
        return cls(data, first, [path.read_bytes() for path in data.small_files()], source)

    def chunks(self, offsets: Sequence[int], length: int) -> list[bytes]:
        with open(self.data.blob_file, "rb") as file:
            return [os.pread(file.fileno(), length, offset) for offset in offsets]

    def new_source(self) -> str:
        """Give the cp source new content (its first 16 bytes) and a new name for it."""
        self.copies += 1
        with open(self.source, "r+b") as file:
            file.write(self.copies.to_bytes(8, "little") + os.urandom(8))
        return f"copy-{self.copies}"


Figures = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    """A named measurement: ``run(session, reference, offsets)`` gives figures by metric."""

    name: str
    metrics: tuple[str, ...]  # the metrics it fills (all marked failed if it fails)
    run: Callable[[Session, Reference, list[int]], Figures]
    read_size: int = 0  # random reads: their size


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


def first_byte(session: Session, ref: Reference, _: list[int]) -> Figures:
    drop_caches()
    seconds, data = session.first_byte()
    check(data == ref.first, f"first byte {data!r}, not {ref.first!r}")
    return {"first": seconds * 1000}


def sequential(session: Session, ref: Reference, _: list[int]) -> Figures:
    size = ref.data.blob.size
    drop_caches()
    before = cpu_seconds(session.pid) if session.pid else 0.0
    cold = session.read_all(size)
    figures = {"cold": mb_per_s(size, cold)}
    if session.pid:
        figures["cpu"] = cpu_seconds(session.pid) - before
    figures["warm"] = mb_per_s(size, session.read_all(size))
    return figures


def random_reads(length: int, prefix: str) -> Callable[[Session, Reference, list[int]], Figures]:
    def run(session: Session, ref: Reference, offsets: list[int]) -> Figures:
        drop_caches()
        times, chunks = session.preads(offsets, length)
        expected = ref.chunks(offsets, length)
        for offset, got, want in zip(offsets, chunks, expected, strict=True):
            check(got == want, f"{length}-byte read at {offset}: wrong bytes ({len(got)})")
        return {
            f"{prefix}_p50": percentile(times, 50) * 1000,
            f"{prefix}_p99": percentile(times, 99) * 1000,
            f"{prefix}_max": max(times) * 1000,
        }

    return run


def small_blobs(session: Session, ref: Reference, _: list[int]) -> Figures:
    drop_caches()
    before = cpu_seconds(session.pid) if session.pid else 0.0
    seconds, chunks = session.read_small()
    figures = {"small": seconds}
    if session.pid:  # per blob, so that --quick and a full run compare
        figures["small_cpu"] = (cpu_seconds(session.pid) - before) * 1000 / len(ref.small)
    for index, (got, want) in enumerate(zip(chunks, ref.small, strict=True)):
        check(got == want, f"small blob {index}: wrong bytes ({len(got)})")
    return figures


def copy_in(session: Session, ref: Reference, _: list[int]) -> Figures:
    name = ref.new_source()
    drop_caches()
    return {"cp": mb_per_s(ref.data.blob.size, session.copy_in(ref.source, name))}


SCENARIOS = (
    Scenario("first byte", ("first",), first_byte),
    Scenario("sequential", ("cold", "warm", "cpu"), sequential),
    Scenario(
        "random 4 KiB", ("r4k_p50", "r4k_p99", "r4k_max"), random_reads(4 * KIB, "r4k"), 4 * KIB
    ),
    Scenario(
        "random 128 KiB",
        ("r128k_p50", "r128k_p99", "r128k_max"),
        random_reads(128 * KIB, "r128k"),
        128 * KIB,
    ),
    Scenario("small blobs", ("small", "small_cpu"), small_blobs),
    Scenario("cp in", ("cp",), copy_in),
)


def rss_metric(scenario: Scenario) -> str:
    return f"rss {scenario.name}"


def measure(
    scenario: Scenario, contender: Contender, ref: Reference, offsets: list[int]
) -> Figures:
    """One scenario on a fresh session of ``contender``, with the mount's peak RSS."""
    with contender.session() as session:
        figures = scenario.run(session, ref, offsets)
        rss = peak_rss(session.pid)
    if rss is not None:
        figures[rss_metric(scenario)] = rss / MIB
    return figures


def offsets_for(scenario: Scenario, size: int, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct offsets aligned to the scenario's read size, in random order."""
    if not scenario.read_size:
        return []
    slots = size // scenario.read_size
    return [slot * scenario.read_size for slot in rng.sample(range(slots), min(count, slots))]
