"""The server's cold read: one 512 MiB blob read whole from ``casfs serve`` and from
buildbox-casd after ``drop_caches``, by the same client (issue 18, item 2).

Run as root from the repository root::

    .venv/bin/python -m bench.server_cold              # 512 MiB, 3 alternating rounds
    .venv/bin/python -m bench.server_cold --size 64M --runs 5 --warm

Both servers get the same random blob (uploaded once). Each round drops the page cache
before each server's read and alternates which server goes first; the client is one
ByteStream Read with no limit, its responses taken undecoded and dropped (the cheapest
client grpcio has, so that the servers, not the client, set the pace). It prints the MB/s
of every read, the medians and casfs/casd. ``--also MODE`` adds a casfs serve whose cold
reads take another path (``CASFS_COLD_READ``: ``off`` reads every blob the ordinary way).
``--warm`` also reads each blob a second time without dropping the cache (the hot path
must stay fast). ``--raw`` adds the disk's own figures for the casfs store file: ``dd``
buffered and ``iflag=direct`` after a drop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import trio

from bench.common import MB, BenchError, drop_caches, require_root, scratch_dir
from casfs._proto import bytestream_pb2
from casfs.cas.client import CasClient
from casfs.config import parse_size
from casfs.digest import Digest
from tests.conftest import remote
from tests.peers import buildbox
from tests.servers import CasfsServer

_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as file:
        left = size
        while left:
            piece = min(left, 8 << 20)
            file.write(os.urandom(piece))
            left -= piece


async def _upload(endpoint: str, instance: str, path: Path) -> Digest:
    async with CasClient(remote(endpoint, instance=instance)) as client:
        return await client.upload_file(path)


def read_whole(target: str, name: str) -> tuple[int, float]:
    """Read one blob whole by ByteStream; (bytes received, seconds)."""
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        read = channel.unary_stream(
            "/google.bytestream.ByteStream/Read",
            request_serializer=bytestream_pb2.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        grpc.channel_ready_future(channel).result(timeout=10)
        received = 0
        start = time.perf_counter()
        for raw in read(bytestream_pb2.ReadRequest(resource_name=name)):
            received += len(raw)
        return received, time.perf_counter() - start


def _dd(path: Path, direct: bool) -> float:
    drop_caches()
    flags = ["iflag=direct"] if direct else []
    start = time.perf_counter()
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M", *flags],
        check=True,
        capture_output=True,
    )
    return path.stat().st_size / MB / (time.perf_counter() - start)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_cold", description=__doc__)
    parser.add_argument("--size", default="512M", help="blob size (512M)")
    parser.add_argument("--runs", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--warm", action="store_true", help="also time a warm re-read")
    parser.add_argument("--raw", action="store_true", help="also time dd of the store file")
    parser.add_argument("--serve-arg", action="append", default=[], help="to casfs serve")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="MODE",
        help="also a casfs serve with CASFS_COLD_READ=MODE (direct, buffered, off)",
    )
    args = parser.parse_args(argv)
    require_root()
    size = parse_size(args.size)
    installed = buildbox.install()
    if isinstance(installed, str):
        raise BenchError(f"buildbox-casd unavailable: {installed}")
    with scratch_dir("casfs-server-cold-") as root, contextlib.ExitStack() as stack:
        blob = root / "blob"
        _random_file(blob, size)
        ours = stack.enter_context(CasfsServer(root / "store", *args.serve_arg))
        casd = stack.enter_context(buildbox.Casd(root / "casd"))
        digest = trio.run(_upload, ours.endpoint, "", blob)
        trio.run(_upload, casd.endpoint, "", blob)
        name = f"blobs/{digest.hash}/{digest.size}"
        targets: dict[str, Callable[[], tuple[int, float]]] = {
            "casfs": functools.partial(read_whole, f"127.0.0.1:{ours.port}", name),
            "casd": functools.partial(read_whole, casd.address, name),
        }
        for mode in args.also:
            with _environment("CASFS_COLD_READ", mode):
                other = stack.enter_context(CasfsServer(root / f"store-{mode}", *args.serve_arg))
            trio.run(_upload, other.endpoint, "", blob)
            targets[f"casfs-{mode}"] = functools.partial(
                read_whole, f"127.0.0.1:{other.port}", name
            )
        blob.unlink()
        cold: dict[str, list[float]] = {key: [] for key in targets}
        warm: dict[str, list[float]] = {key: [] for key in targets}
        for run in range(args.runs):
            order = list(targets)[run % len(targets) :] + list(targets)[: run % len(targets)]
            for key in order:
                drop_caches()
                received, seconds = targets[key]()
                if received < size:
                    raise BenchError(f"{key}: read {received} of {size} bytes")
                cold[key].append(size / MB / seconds)
                if args.warm:
                    _, seconds = targets[key]()
                    warm[key].append(size / MB / seconds)
                print(f"run {run + 1} {key}: cold {cold[key][-1]:.0f} MB/s", flush=True)
        print(f"blob {size} bytes, {args.runs} rounds, casfs serve {' '.join(args.serve_arg)}")
        for label, figures in (("cold", cold), ("warm", warm)):
            if not figures["casfs"]:
                continue
            theirs = statistics.median(figures["casd"])
            for key, values in figures.items():
                median = statistics.median(values)
                print(
                    f"{label}: {key} {median:.0f} MB/s {sorted(round(f) for f in values)}"
                    + (f", {key}/casd {median / theirs:.2f}x" if key != "casd" else "")
                )
        if args.raw:
            path = ours.store / "cas" / "sha256" / digest.hash[:2] / digest.hash
            buffered = [_dd(path, False) for _ in range(args.runs)]
            direct = [_dd(path, True) for _ in range(args.runs)]
            print(
                f"dd of the store file after drop_caches: buffered "
                f"{statistics.median(buffered):.0f} MB/s, iflag=direct "
                f"{statistics.median(direct):.0f} MB/s"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench.server_cold: {error}", file=sys.stderr)
        sys.exit(2)
