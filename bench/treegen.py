"""A tree shaped like a source checkout, the same from the same seed (issue 17's tree).

``python -m bench.treegen DIR [--seed 17] [--files 5000] [--dirs 300]`` writes DIR:
``--dirs`` directories (a random tree, at most 8 deep), ``--files`` files spread over
them, most 1-32 KiB, one in 50 of 32-256 KiB and one in 500 of 1-4 MiB, about one in
100 executable, a few relative symlinks to files of the tree, and ``NEEDLE`` planted in a
few files for ``grep -r``. Contents are hex text lines (greppable, not compressible away),
and every mtime is the same, so ``casfs put -r DIR`` prints the same digest for the same
seed on any machine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

NEEDLE = "casfs-tree-needle"
MTIME_NS = 1_700_000_000 * 10**9
KIB = 1 << 10
MIB = 1 << 20


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 1 / 500:
        return rng.randint(MIB, 4 * MIB)
    if roll < 1 / 50:
        return rng.randint(32 * KIB, 256 * KIB)
    return rng.randint(KIB, 32 * KIB)


def _content(rng: random.Random, size: int, needle: bool) -> bytes:
    line_bytes = 64  # 63 hex digits and a newline
    lines = size // line_bytes + 1
    text = rng.randbytes(lines * 32).hex()
    body = "\n".join(text[i * 64 : i * 64 + 63] for i in range(lines))
    if needle:
        middle = len(body) // 2
        body = body[:middle] + NEEDLE + body[middle + len(NEEDLE) :]
    return body.encode()[:size]


def generate(root: Path, seed: int = 17, files: int = 5000, dirs: int = 300) -> dict[str, int]:
    """Write the tree at ``root`` (which must not exist); returns counts of what it made."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    directories = [root]
    depth = {root: 0}
    while len(directories) < dirs:
        parent = rng.choice([d for d in directories if depth[d] < 8])
        child = (
            parent / f"{rng.choice(['src', 'lib', 'pkg', 'test', 'doc', 'mod'])}{len(directories)}"
        )
        child.mkdir()
        depth[child] = depth[parent] + 1
        directories.append(child)
    made: list[Path] = []
    total = executables = 0
    for i in range(files):
        directory = rng.choice(directories)
        path = directory / f"file{i:05}.{rng.choice(['c', 'h', 'py', 'txt', 'json'])}"
        data = _content(rng, _size(rng), needle=i % 997 == 0)
        path.write_bytes(data)
        total += len(data)
        if rng.random() < 0.01:
            path.chmod(0o755)
            executables += 1
        made.append(path)
    links = 0
    for i in range(max(1, files // 500)):
        target = rng.choice(made)
        link = rng.choice(directories) / f"link{i:03}"
        link.symlink_to(os.path.relpath(target, link.parent))
        links += 1
    for path in [*made, *directories[::-1]]:
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return {"directories": len(directories), "files": files, "bytes": total,
            "executables": executables, "symlinks": links}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treegen", description=__doc__)
    parser.add_argument("root", type=Path, help="the directory to create")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--dirs", type=int, default=300)
    args = parser.parse_args(argv)
    if args.root.exists():
        print(f"{args.root} exists", file=sys.stderr)
        return 2
    counts = generate(args.root, args.seed, args.files, args.dirs)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
