"""What the workarounds for servers that bend the rules cost: the battery of
``tests/test_bent_servers.py`` (four 5 MiB files, a 500-file tree) written once, then read
back cold through a fresh mount against the plain fault proxy and against each fake that
changes reads. Prints the wall time of each read-back and the calls the proxy saw.

    python -m tests.bent_cost --runs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.faultproxy import FaultProxy
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_bent_servers import Battery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casfs-bent-cost-") as tmp:
        measure(Path(tmp), args.runs)


def measure(root: Path, runs: int) -> None:
    """Write the battery in once, then read it back ``runs`` times against each fake."""
    battery = Battery.make(root)
    with (
        CasfsServer(root / "store") as server,
        FaultProxy(f"127.0.0.1:{server.port}") as proxy,
    ):
        with CasfsMount(root / "mnt-in", "--remote", proxy.endpoint) as writer:
            battery.write_in(writer)

        def whole_blocks() -> None:
            proxy.block_reads = "refuse"

        def by_hash() -> None:
            proxy.by_hash_store = root / "store"

        fakes: list[tuple[str, Callable[[], None]]] = [
            ("plain", lambda: None),
            ("whole blocks (refuse)", whole_blocks),
            ("FindMissingBlobs by hash", by_hash),
        ]
        for run in range(runs):
            for label, fake in fakes:
                proxy.reset()
                fake()
                proxy.calls.clear()
                with CasfsMount(root / f"mnt-{run}-{len(label)}", "--remote", proxy.endpoint) as m:
                    started = time.monotonic()
                    battery.read_back(m)
                    took = time.monotonic() - started
                calls = ", ".join(
                    f"{method.rsplit('/', 1)[1]} {count}"
                    for method, count in sorted(proxy.calls.items())
                )
                print(f"run {run}  {label:26s} {took:6.2f} s  {calls}", flush=True)


if __name__ == "__main__":
    main()
