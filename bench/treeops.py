"""What a walk of a tree costs the mount: the FUSE requests it answers and its CPU time.

``python -m bench.treeops [--seed 17] [--files 5000] [--dirs 300] [-- MOUNT ARGS]`` (as
root: the cold runs drop the page cache) writes the ``bench.treegen`` tree, uploads it to a
``casfs serve``, mounts it once, and runs in that mount ``ls -lR`` (cold, warm), then
``tar cf - . | wc -c`` (cold, warm, warm). For each command it prints the wall time, the
mount process's CPU time (``/proc/PID/stat``) and the requests it answered by kind (the
``fuse.ops`` of ``user.casfs.status``). Where ``bench.treemount`` compares mounts, this
says where casfs's own time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from bench.common import Stopwatch, drop_caches, progress, require_root, scratch_dir
from bench.treegen import generate
from bench.treemount import _upload
from tests.mounts import CasfsMount
from tests.servers import CasfsServer

COMMANDS = (
    ("ls -lR, cold", "ls -lR . > /dev/null"),
    ("ls -lR, warm", "ls -lR . > /dev/null"),
    ("tar, cold", "tar cf - . | wc -c"),
    ("tar, warm", "tar cf - . | wc -c"),
    ("tar, warm again", "tar cf - . | wc -c"),
)


def requests(mountpoint: Path) -> dict[str, int]:
    """The requests the mount has answered so far, by kind."""
    value = os.getxattr(mountpoint, "user.casfs.status")
    ops: dict[str, int] = json.loads(value)["fuse"]["ops"]
    return ops


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treeops", description=__doc__)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--dirs", type=int, default=300)
    parser.add_argument("mount_args", nargs="*", help="more arguments for casfs mount")
    args = parser.parse_args(argv)
    require_root()
    with scratch_dir("casfs-treeops-") as scratch:
        progress("writing the tree")
        generate(scratch / "tree", args.seed, args.files, args.dirs)
        with CasfsServer(scratch / "store") as server:
            digest = trio.run(_upload, server.endpoint, "main", scratch / "tree")
            mountpoint = scratch / "mnt"
            options = ("--remote", server.endpoint, "--cache-size", "512M", *args.mount_args)
            with CasfsMount(mountpoint, *options) as mount:
                tree = mountpoint / "main" / "trees" / digest.hash / str(digest.size)
                for label, command in COMMANDS:
                    if label.endswith("cold"):
                        drop_caches()
                    before, cpu = requests(mountpoint), cpu_seconds(mount.pid)
                    with Stopwatch() as watch:
                        subprocess.run(
                            ["sh", "-c", command], cwd=tree, check=True, capture_output=True
                        )
                    cpu = cpu_seconds(mount.pid) - cpu
                    after = requests(mountpoint)
                    answered = {
                        k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)
                    }
                    shown = ", ".join(f"{n} {k}" for k, n in sorted(answered.items()))
                    print(f"{label}: {watch.seconds:.2f} s, mount CPU {cpu:.2f} s; {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
