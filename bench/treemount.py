"""The tree scenario of issue 17: one tree shaped like a source checkout, walked and read
through casfs mount's ``trees/``, through buildbox-fuse (``--input-digest-value``) and as a
local copy.

``python -m bench.treemount [--runs 3] [--seed 17] [--files 5000] [--dirs 300]`` (as root:
cold figures drop the page cache) writes the ``bench.treegen`` tree, uploads it with
``put -r``'s ``put_tree`` to a ``casfs serve`` and to a ``buildbox-casd`` (the same
digest), and for each contender, each run, each command, on a fresh mount with fresh cache
directories: drops the page cache, times the command (cold), then times it again (warm).
The commands: ``ls -lR . > /dev/null``; ``tar cf - . | wc -c`` (reads every file: GNU tar
skips reading when it writes to /dev/null, not to a pipe); ``grep -r NEEDLE . | wc -l``.
Also the peak RSS of each mount process. Contenders take turns going first. Prints a
markdown table (seconds: median and min-max), the ratios and the issue's targets.

A fourth contender, "null FUSE" (``bench.tree_ceiling``), is a pyfuse3 file system that
mirrors the local copy with no work behind its answers: its figures are what any file
system on pyfuse3 can reach here, so casfs/null FUSE is casfs's own cost.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.common import (
    BenchError,
    Stopwatch,
    Summary,
    drop_caches,
    markdown_table,
    progress,
    require_root,
    scratch_dir,
)
from bench.peers import CASFS_CACHE, _wait_for_readahead
from bench.processes import FuseProcess, peak_rss, watchdog
from bench.tree_ceiling import null_tree
from bench.treegen import NEEDLE, generate
from casfs.cas.client import CasClient
from casfs.digest import Digest
from casfs.trees.local import put_tree
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.peers import buildbox
from tests.servers import CasfsServer

COMMANDS = {
    "ls -lR": "ls -lR . > /dev/null",
    "tar | wc -c": "tar cf - . | wc -c",
    "grep -r": f"grep -r {NEEDLE} . | wc -l",
}
CONTENDERS = ("casfs", "buildbox-fuse", "null FUSE", "local")


@dataclass
class Setup:
    scratch: Path
    tree: Path
    digest: Digest
    casfs: CasfsServer
    casd: buildbox.Casd | None
    bbfuse: Path | None


async def _upload(endpoint: str, instance: str, tree: Path) -> Digest:
    async with CasClient(remote(endpoint, instance=instance)) as client:
        return await put_tree(client, tree)


@contextlib.contextmanager
def session(setup: Setup, contender: str, name: str) -> Iterator[tuple[Path, int | None]]:
    """A fresh mount of the tree (its directory and process id), or the local copy."""
    directory = setup.scratch / "sessions" / name
    directory.mkdir(parents=True)
    mountpoint = directory / "mnt"
    digest = setup.digest
    if contender == "local":
        yield setup.tree, None
    elif contender == "null FUSE":
        with null_tree(mountpoint, setup.tree, directory / "fuse.log") as fuse:
            yield mountpoint, fuse.pid
    elif contender == "casfs":
        args = ("--remote", setup.casfs.endpoint, "--cache-size", CASFS_CACHE)
        with CasfsMount(mountpoint, *args) as mount, watchdog(mount.pid, contender):
            _wait_for_readahead(mountpoint)
            yield mountpoint / "main" / "trees" / digest.hash / str(digest.size), mount.pid
    else:
        assert setup.casd is not None and setup.bbfuse is not None
        local = directory / "local"
        local.mkdir()
        command = [
            str(setup.bbfuse),
            f"--local={local}",
            f"--remote={setup.casd.http_url}",
            f"--input-digest-value={digest.hash}/{digest.size}",
            str(mountpoint),
        ]
        with (
            FuseProcess(contender, command, mountpoint, directory / "fuse.log") as fuse,
            watchdog(fuse.pid, contender),
        ):
            yield mountpoint, fuse.pid


def _timed(command: str, where: Path) -> float:
    with Stopwatch() as watch:
        done = subprocess.run(["sh", "-c", command], cwd=where, capture_output=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"{command} in {where}: {done.stderr.decode(errors='replace')[-500:]}")
    return watch.seconds


def measure(setup: Setup, contenders: Sequence[str], runs: int) -> dict[str, list[float]]:
    """Figures by "contender|what" (seconds; RSS in MiB)."""
    figures: dict[str, list[float]] = {}
    sessions = itertools.count()
    for run in range(runs):
        order = list(contenders[run % len(contenders) :]) + list(
            contenders[: run % len(contenders)]
        )
        for contender in order:
            for label, command in COMMANDS.items():
                progress(f"run {run + 1}/{runs}: {contender}: {label}")
                name = f"{next(sessions)}-{contender.replace(' ', '-')}"
                with session(setup, contender, name) as (where, pid):
                    drop_caches()
                    cold = _timed(command, where)
                    warm = _timed(command, where)
                    rss = peak_rss(pid)
                figures.setdefault(f"{contender}|{label}, cold", []).append(cold)
                figures.setdefault(f"{contender}|{label}, warm", []).append(warm)
                if rss is not None:
                    figures.setdefault(f"{contender}|peak RSS, MiB", []).append(rss / (1 << 20))
    return figures


def report(figures: dict[str, list[float]], contenders: Sequence[str]) -> str:
    whats = [f"{label}, {when}" for label in COMMANDS for when in ("cold", "warm")]
    whats.append("peak RSS, MiB")
    header = ["what", *contenders]
    if "buildbox-fuse" in contenders:
        header.append("casfs/buildbox-fuse")
    header += ["casfs/null FUSE", "casfs/local"]
    rows = []
    medians: dict[str, float] = {}
    for what in whats:
        row = [what]
        for contender in contenders:
            values = figures.get(f"{contender}|{what}")
            if values:
                summary = Summary.of(values)
                medians[f"{contender}|{what}"] = summary.median
                row.append(summary.show(2 if "RSS" not in what else 0))
            else:
                row.append("n/a")
        for peer in [p for p in ("buildbox-fuse", "null FUSE", "local") if p in contenders]:
            ours, theirs = medians.get(f"casfs|{what}"), medians.get(f"{peer}|{what}")
            row.append(f"{ours / theirs:.2f}x" if ours and theirs else "n/a")
        rows.append(row)
    targets = [
        ("cold full read (tar) <= 1.0x buildbox-fuse", "tar | wc -c, cold", "buildbox-fuse", 1.0),
        ("cold ls -lR <= 1.0x buildbox-fuse", "ls -lR, cold", "buildbox-fuse", 1.0),
        ("warm full read (tar) <= 2x local", "tar | wc -c, warm", "local", 2.0),
    ]  # fmt: skip
    lines = []
    for text, what, peer, bound in targets:
        ours, theirs = medians.get(f"casfs|{what}"), medians.get(f"{peer}|{what}")
        if not ours or not theirs:
            lines.append(f"- {text}: n/a")
        else:
            verdict = "met" if ours / theirs <= bound else "MISSED"
            lines.append(f"- {text}: {ours / theirs:.2f}x, {verdict}")
    return markdown_table(header, rows) + "\n\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treemount", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--dirs", type=int, default=300)
    args = parser.parse_args(argv)
    require_root()
    with scratch_dir("casfs-treemount-") as scratch, contextlib.ExitStack() as stack:
        progress("writing the tree")
        counts = generate(scratch / "tree", args.seed, args.files, args.dirs)
        server = stack.enter_context(CasfsServer(scratch / "store"))
        digest = trio.run(_upload, server.endpoint, "main", scratch / "tree")
        casd: buildbox.Casd | None = None
        bbfuse: Path | None = None
        contenders = list(CONTENDERS)
        installed = buildbox.install()
        if isinstance(installed, str):
            progress(f"buildbox-fuse missing: {installed}")
            contenders.remove("buildbox-fuse")
        else:
            casd = stack.enter_context(buildbox.Casd(scratch / "casd"))
            bbfuse = installed / "buildbox-fuse"
            theirs = trio.run(_upload, casd.endpoint, "", scratch / "tree")
            if theirs != digest:
                raise BenchError(f"buildbox-casd has the tree as {theirs}, casfs as {digest}")
        setup = Setup(scratch, scratch / "tree", digest, server, casd, bbfuse)
        progress(f"tree {digest}: {counts}")
        figures = measure(setup, contenders, args.runs)
    print(f"tree {digest}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"{args.runs} runs; casfs mount --remote grpc://... --cache-size {CASFS_CACHE}\n")
    print(report(figures, contenders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
