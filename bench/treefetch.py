"""How fast a tree's Directories arrive: GetTree against BatchReadBlobs level by level.

``python -m bench.treefetch [--runs 7] [--seed 17] [--dirs 300] [--files 5000]`` makes the
``bench.treegen`` tree, starts a ``casfs serve`` on 127.0.0.1, uploads the tree with
``casfs put -r``'s ``put_tree``, and times ``TreeSource.prefetch`` of the whole tree with
each method, each run on a fresh client (a new channel, an empty cache), the methods in
turn so that neither always goes first. Also timed: one ``directory()`` call per
Directory (what a walk with no prefetch costs), and ``small_files`` of every directory.
Prints a markdown table (median and min-max, ms); docs/performance.md keeps the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from bench.common import Summary, markdown_table, progress, scratch_dir
from bench.treegen import generate
from casfs.cas.client import CasClient
from casfs.digest import Digest
from casfs.trees.local import put_tree
from casfs.trees.model import Directory
from casfs.trees.smallfiles import small_files
from casfs.trees.source import Prefetch, TreeSource
from tests.conftest import remote
from tests.servers import CasfsServer


async def _one_by_one(source: TreeSource, root: Digest) -> list[Directory]:
    """Every Directory of the tree, each asked for in turn (from the cache if there)."""
    found: list[Directory] = []
    level = [root]
    while level:
        below = []
        for digest in level:
            directory = await source.directory(digest)
            found.append(directory)
            below += [d.digest for d in directory.directories]
        level = below
    return found


async def _small(source: TreeSource, root: Digest) -> None:
    await source.prefetch(root)
    got = 0

    async def store(digest: Digest, data: bytes) -> None:
        nonlocal got
        got += len(data)

    for directory in await _one_by_one(source, root):
        await small_files(source.client, directory, store)


WAYS: dict[str, Callable[[TreeSource, Digest], Awaitable[object]]] = {
    "prefetch, GetTree": lambda s, r: s.prefetch(r, Prefetch.GET_TREE),
    "prefetch, BatchReadBlobs by level": lambda s, r: s.prefetch(r, Prefetch.BATCH),
    "no prefetch: one read per Directory": _one_by_one,
    "Directories, then every small file (batches)": _small,
}


async def measure(endpoint: str, root: Digest, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    names = list(WAYS)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            async with CasClient(remote(endpoint)) as client:
                await client.capabilities()  # the channel is up before the clock starts
                source = TreeSource(client)
                started = time.perf_counter()
                await WAYS[name](source, root)
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treefetch", description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--dirs", type=int, default=300)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args(argv)
    with scratch_dir("casfs-treefetch-") as scratch:
        progress("writing the tree")
        generate(scratch / "tree", args.seed, args.files, args.dirs)
        with CasfsServer(scratch / "store") as server:
            progress(f"uploading to {server.endpoint}")

            async def upload() -> Digest:
                async with CasClient(remote(server.endpoint)) as client:
                    return await put_tree(client, Path(scratch / "tree"))

            root = trio.run(upload)
            progress(f"tree {root}; measuring {args.runs} runs")
            times = trio.run(measure, server.endpoint, root, args.runs)
    rows = []
    for name, values in times.items():
        summary = Summary.of(values)
        rows.append([name, summary.show()])
    print(f"tree {root}: {args.dirs} directories, {args.files} files, {args.runs} runs\n")
    print(markdown_table(["what", "ms, median (min-max)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
