"""The figures of ``python -m bench`` that are not one session of one contender (issue 18):

- ``ceiling``: the null pyfuse3 file system of ``bench.fuse_ceiling`` over a file of the
  blob's size, cold and warm (MB/s): the column "null FUSE", what any FUSE mount here can
  reach.
- ``remount``: the blob re-read after a remount (MB/s), casfs with its disk cache and
  rclone ``--vfs-cache-mode full`` with its cache directory (``bench.remount``).
- ``servercold``: the blob read whole by one ByteStream Read after ``drop_caches`` from
  ``casfs serve`` (the casfs column) and from buildbox-casd (the buildbox-fuse column: the
  casd it mounts from), MB/s (``bench.server_cold``).

Each runs ``runs`` times after the scenarios, its contenders in turn. One that fails or
cannot run here is a note in the table, not the end of the run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import MB, BenchError, drop_caches, progress
from bench.fuse_ceiling import null_fuse, read_cold_and_warm
from bench.peers import BuildboxFuseContender, Contender, RcloneContender
from bench.remount import casfs_remount, rclone_remount
from bench.report import Results
from bench.server_cold import read_whole
from bench.sessions import Data
from casfs.fs.mountpoint import set_readahead
from tests.servers import CasfsServer

EXTRA_KEYS = ("ceiling", "remount", "servercold")
NULL_FUSE = "nullfs"


@dataclass
class NullFuseColumn:
    """The null file system as a column of the table (``bench.report.Column``)."""

    key: str = NULL_FUSE
    title: str = "null FUSE"
    is_mount: bool = True
    missing: str | None = None
    command: str = "python -m bench.fuse_ceiling --serve MNT (pyfuse3, every read from memory)"


def _attempt(results: Results, key: str, metrics: Sequence[str], what: Callable[[], None]) -> None:
    try:
        what()
    except Exception as error:  # one extra's failure is a cell, not the end of the run
        reason = " ".join(str(error).split())[:300] or repr(error)
        progress(f"  FAILED: {reason}")
        results.fail(key, metrics, f"failed: {reason}")


def _add(results: Results, key: str, measure: Callable[[], float]) -> None:
    results.add(key, {"remount": measure()})


def _ceiling(root: Path, data: Data, runs: int, results: Results) -> None:
    mountpoint = root / "null-mnt"
    size = data.blob.size
    with null_fuse(mountpoint, size, root / "null-fuse.log"):
        set_readahead(mountpoint, 1024)
        for number in range(1, runs + 1):
            progress(f"run {number}/{runs}: null FUSE")
            results.add(NULL_FUSE, read_cold_and_warm(mountpoint / "file", size))


def _of(contenders: Sequence[Contender], kind: type[Contender], key: str) -> Contender | None:
    found = [c for c in contenders if isinstance(c, kind) and c.key == key and not c.missing]
    return found[0] if found else None


def _alternated(
    runs: int,
    title: str,
    metric: str,
    items: Sequence[tuple[str, Callable[[], None]]],
    results: Results,
) -> None:
    """Every item once a run, the order reversed every other run, as the main table does;
    a failure is the item's result (``_attempt``)."""
    for number in range(1, runs + 1):
        for key, what in items if number % 2 else items[::-1]:
            progress(f"run {number}/{runs}: {title}: {key}")
            _attempt(results, key, (metric,), what)


def _remount(
    root: Path,
    server: CasfsServer,
    contenders: Sequence[Contender],
    data: Data,
    runs: int,
    results: Results,
) -> None:
    size, name = data.blob.size, f"{data.blob.hash}/{data.blob.size}"
    work = root / "remount"
    work.mkdir(exist_ok=True)
    measures: list[tuple[str, Callable[[], float]]] = [
        ("casfs", lambda: casfs_remount(work, server.endpoint, name, size))
    ]
    rclone = _of(contenders, RcloneContender, "rclone-full")
    if isinstance(rclone, RcloneContender) and rclone.rclone and rclone.url:
        command, url = rclone.rclone, rclone.url
        measures.append(("rclone-full", lambda: rclone_remount(work, command, url, size)))
    runs_of = [(key, functools.partial(_add, results, key, measure)) for key, measure in measures]
    _alternated(runs, "re-read after remount", "remount", runs_of, results)


def _server_cold(
    server: CasfsServer, contenders: Sequence[Contender], data: Data, runs: int, results: Results
) -> None:
    name = f"blobs/{data.blob.hash}/{data.blob.size}"
    targets: list[tuple[str, str]] = [("casfs", f"127.0.0.1:{server.port}")]
    bbfuse = _of(contenders, BuildboxFuseContender, "bbfuse")
    if isinstance(bbfuse, BuildboxFuseContender) and bbfuse.casd is not None:
        targets.append(("bbfuse", bbfuse.casd.address))

    def read(key: str, address: str) -> None:
        drop_caches()
        received, seconds = read_whole(address, name)  # (message bytes: framing included)
        if received < data.blob.size:
            raise BenchError(f"{key}: read {received} of {data.blob.size} bytes")
        results.add(key, {"server_cold": data.blob.size / MB / seconds})

    reads = [(key, functools.partial(read, key, address)) for key, address in targets]
    _alternated(runs, "server cold read", "server_cold", reads, results)


def measure_extras(
    keys: Sequence[str],
    root: Path,
    server: CasfsServer,
    contenders: Sequence[Contender],
    data: Data,
    runs: int,
    results: Results,
) -> list[NullFuseColumn]:
    """Run the extras named in ``keys`` into ``results``; the columns they add."""
    columns: list[NullFuseColumn] = []
    if "ceiling" in keys:
        columns.append(NullFuseColumn())
        _attempt(results, NULL_FUSE, ("cold", "warm"), lambda: _ceiling(root, data, runs, results))
    if "remount" in keys:
        _remount(root, server, contenders, data, runs, results)
    if "servercold" in keys:
        _server_cold(server, contenders, data, runs, results)
    return columns
