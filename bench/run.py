"""``python -m bench``: every scenario over casfs, its peers, the direct client and a file.

Run as root from the repository root (cold reads drop the page cache)::

    .venv/bin/python -m bench [--quick] [--size 1G] [--runs 3] [--random 200] [--small 1000]
                              [--only casfs,direct,local] [--scenarios first,sequential,...]

Setup, once, in a scratch directory under ``$TMPDIR`` (default /var/tmp, on disk):
``served/blob`` (``--size`` random bytes) and ``served/small/NNNN`` (``--small`` random
4 KiB files), a ``casfs serve`` holding them as blobs, and each peer's own setup
(``bench.peers``: buildbox-casd with a Directory tree of the same blobs, ``rclone serve
http`` of ``served/``). A peer that cannot be installed or started is reported missing.

Then ``--runs`` times: every scenario (``bench.scenarios``), each over every contender in
turn, each on a fresh, cold session. A contender's scenario that fails is reported failed
and the run goes on. Then the extras (``bench.extras``: the null FUSE file system, the
re-read after a remount, the servers' cold read), ``--runs`` times (once with ``--quick``).
One markdown table goes to stdout at the end (``bench.report``),
progress to stderr. Exit code 0 when the table was made (targets met or not, peers missing
or not), 1 when the run itself failed, 130 on Ctrl-C or SIGTERM. Whatever happens, every
mount is unmounted, every process stopped and the scratch directory removed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import trio

from bench.common import (
    GIB,
    KIB,
    MIB,
    BenchError,
    command_line,
    machine,
    progress,
    require_root,
    scratch_dir,
    write_random_file,
)
from bench.extras import EXTRA_KEYS, measure_extras
from bench.peers import (
    BuildboxFuseContender,
    CasfsContender,
    Contender,
    DirectContender,
    LocalContender,
    Missing,
    RcloneContender,
)
from bench.processes import HttpServer
from bench.report import Column, Results, notes, table
from bench.scenarios import SCENARIOS, Reference, Scenario, measure, offsets_for
from bench.sessions import SMALL_SIZE, Data, NotApplicable, small_name
from casfs.cas.client import CasClient
from casfs.config import ConfigError, parse_size
from casfs.digest import Digest
from tests.conftest import remote
from tests.servers import CasfsServer

SCENARIO_KEYS = {
    "first": "first byte",
    "sequential": "sequential",
    "random4k": "random 4 KiB",
    "random128k": "random 128 KiB",
    "small": "small blobs",
    "cp": "cp in",
}
CONTENDER_KEYS = ("casfs", "bbfuse", "rclone-off", "rclone-full", "direct", "local")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="casfs mount beside buildbox-fuse, rclone mount, the direct client and a "
        "local file: every scenario, one markdown table.",
    )
    parser.add_argument("--size", help="the large blob (default 1G; 64M with --quick)")
    parser.add_argument("--runs", type=int, help="repetitions (default 3; 2 with --quick)")
    parser.add_argument("--random", type=int, help="random reads per size (200; 50 with --quick)")
    parser.add_argument("--small", type=int, help="4 KiB blobs (1000; 300 with --quick)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the random offsets")
    parser.add_argument(
        "--only", help=f"comma-separated contenders, of: {','.join(CONTENDER_KEYS)} (all)"
    )
    parser.add_argument(
        "--scenarios", help=f"comma-separated scenarios, of: {','.join(SCENARIO_KEYS)} (all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB, 2 runs, 50 random reads, 300 small blobs"
    )
    args = parser.parse_args(argv)
    try:
        args.size = parse_size(args.size or ("64M" if args.quick else "1G"))
    except ConfigError as error:
        parser.error(str(error))
    defaults = {"runs": (2, 3), "random": (50, 200), "small": (300, 1000)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.size < 128 * KIB * args.random:
        parser.error(f"--size must hold --random ({args.random}) distinct 128 KiB pieces")
    if args.runs < 1 or args.random < 1 or args.small < 1:
        parser.error("--runs, --random and --small must be at least 1")
    args.only = _choose(parser, "--only", args.only, CONTENDER_KEYS)
    args.scenarios = _choose(parser, "--scenarios", args.scenarios, (*SCENARIO_KEYS, *EXTRA_KEYS))
    return args


def _choose(
    parser: argparse.ArgumentParser, option: str, text: str | None, known: tuple[str, ...]
) -> tuple[str, ...]:
    if text is None:
        return known
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"{option}: unknown {', '.join(unknown) or 'empty list'}")
    return chosen


def write_data(root: Path, size: int, small: int) -> Path:
    """``served/blob`` and ``served/small/NNNN`` of random bytes; returns ``served``."""
    served = root / "served"
    (served / "small").mkdir(parents=True)
    progress(f"writing {size} random bytes and {small} x {SMALL_SIZE} to {served}")
    write_random_file(served / "blob", size)
    for index in range(small):
        write_random_file(served / "small" / small_name(index), SMALL_SIZE)
    return served


async def upload(endpoint: str, served: Path, small: int) -> Data:
    """Upload the data to ``casfs serve``; the digests are those of every server."""
    async with CasClient(remote(endpoint)) as client:
        blob = await client.upload_file(served / "blob")
        pieces = [(served / "small" / small_name(i)).read_bytes() for i in range(small)]
        digests = [Digest.of_bytes(piece) for piece in pieces]
        await client.batch_update(list(zip(digests, pieces, strict=True)))
    return Data(served, blob, tuple(digests))


def make_contenders(root: Path, server: CasfsServer, only: Sequence[str]) -> list[Contender]:
    http: list[HttpServer] = []
    every: list[Contender] = [
        CasfsContender(root, server),
        BuildboxFuseContender(root),
        RcloneContender(root, "off", http),
        RcloneContender(root, "full", http),
        DirectContender(root, server),
        LocalContender(root),
    ]
    return [contender for contender in every if contender.key in only]


def set_up(stack: contextlib.ExitStack, contenders: Sequence[Contender], data: Data) -> None:
    for contender in contenders:
        progress(f"setting up {contender.title}")
        try:
            contender.setup(stack, data)
        except Missing as error:
            contender.missing = str(error)
        except Exception as error:  # a peer's setup must not stop the others
            contender.missing = f"setup failed: {error!r}"
        if contender.missing:
            progress(f"  {contender.title} is missing: {contender.missing}")


def _in_turn(contenders: Sequence[Contender], number: int) -> list[Contender]:
    """The contenders in the order of run ``number``: each run starts one further along.

    Whoever goes first meets a server and a page cache in another state (the first big
    write a fresh ``casfs serve`` takes costs it twice the CPU of the next, measured), so a
    fixed order would give one contender every such turn.
    """
    shift = (number - 1) % len(contenders) if contenders else 0
    return [*contenders[shift:], *contenders[:shift]]


def measure_all(
    scenarios: Sequence[Scenario],
    contenders: Sequence[Contender],
    ref: Reference,
    runs: int,
    random_reads: int,
    rng: random.Random,
) -> Results:
    results = Results()
    size = ref.data.blob.size
    for number in range(1, runs + 1):
        for scenario in scenarios:
            offsets = offsets_for(scenario, size, random_reads, rng)
            for contender in _in_turn(contenders, number):
                if contender.missing:
                    continue
                progress(f"run {number}/{runs}: {scenario.name}: {contender.title}")
                try:
                    figures = measure(scenario, contender, ref, offsets)
                except NotApplicable as why:
                    progress(f"  n/a: {why}")
                    results.fail(contender.key, scenario.metrics, f"n/a: {why}")
                    continue
                except Exception as error:  # one contender's failure is a cell, not the end
                    reason = " ".join(str(error).split())[:300] or repr(error)
                    progress(f"  FAILED: {reason}")
                    results.fail(contender.key, scenario.metrics, f"failed: {reason}")
                    continue
                shown = ", ".join(f"{metric} {value:.3g}" for metric, value in figures.items())
                progress(f"  {shown}")
                results.add(contender.key, figures)
    return results


def report(
    args: argparse.Namespace,
    contenders: Sequence[Column],
    results: Results,
    data: Data,
    seconds: float,
) -> str:
    size = data.blob.size
    human = f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"
    lines = [
        "# casfs beside its peers",
        "",
        f"- machine: {machine()}",
        f"- command: `{command_line()}`",
        f"- data: one blob of {human} ({size} bytes) and {len(data.small)} blobs of 4 KiB, "
        "random bytes, the same on every server and on the local disk",
        f"- runs: {args.runs}; cells are the median and (min-max) over the runs; "
        f"{args.random} random reads per size per run; wall time {seconds:.0f} s",
        *(f"- {c.title}: `{c.command}`" for c in contenders if c.command),
        "",
        table(results, contenders),
        "",
        "MB/s is 10^6 bytes per second. casfs/peer is the ratio of the medians in the row's "
        "unit: for MB/s a ratio above 1 means casfs is faster, for ms and s below 1 does. "
        "Cold means a fresh mount (fresh cache directories) and dropped page cache; the "
        "direct client reads small blobs with one batch_read. See bench/scenarios.py for "
        "exactly what each figure times.",
    ]
    found = notes(results, contenders)
    if found:
        lines += ["", "Notes:", *found]
    return "\n".join(lines)


def run(args: argparse.Namespace, root: Path) -> str:
    started = time.monotonic()
    served = write_data(root, args.size, args.small)
    source = write_random_file(root / "cp-source", args.size)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(CasfsServer(root / "store"))
        progress(f"uploading to casfs serve at {server.endpoint}")
        data = trio.run(upload, server.endpoint, served, args.small)
        contenders = make_contenders(root, server, args.only)
        set_up(stack, contenders, data)
        chosen = {SCENARIO_KEYS[k] for k in args.scenarios if k in SCENARIO_KEYS}
        scenarios = [s for s in SCENARIOS if s.name in chosen]
        ref = Reference.of(data, source)
        results = measure_all(
            scenarios, contenders, ref, args.runs, args.random, random.Random(args.seed)
        )
        # --quick: the extras once, to stay under 3 minutes on a loaded 2-core machine
        extra_runs = 1 if args.quick else args.runs
        extra = measure_extras(args.scenarios, root, server, contenders, data, extra_runs, results)
        progress("stopping servers")
    columns: list[Column] = [*contenders, *extra]
    return report(args, columns, results, data, time.monotonic() - started)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # unwind (unmount, stop) as Ctrl-C does
    try:
        require_root()
        with scratch_dir("casfs-bench-") as root:
            text = run(args, root)
    except KeyboardInterrupt:
        progress("interrupted: everything was stopped and unmounted")
        return 130
    except BenchError as error:  # could not run here: say why, no traceback
        progress(f"bench: {error}")
        return 1
    except Exception:
        progress(traceback.format_exc())
        progress("bench: FAILED to run (see above)")
        return 1
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
