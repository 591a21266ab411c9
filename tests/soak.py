"""A soak test: many readers and writers through one real mount for a while.

32 reader threads read blobs (whole, checksummed, or at random offsets, compared with the
local copy) while 8 writer threads write new files into ``uploads/``, close them, check the
digest casfs reports and read them back. Nothing may fail, every byte must match, and the
mount's resident memory and open descriptors must stay flat.

    python -m tests.soak --seconds 600          # a long run; prints the figures
    CASFS_SOAK_SECONDS=600 pytest tests/test_soak.py

(``tests/test_soak.py`` runs it for 20 s in ``make test``.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from casfs.cas.client import CasClient
from casfs.digest import Digest
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_client_server import MIB, run_client

BLOB_SIZES = [1, 4096, 65_536 + 3, 300_000, MIB, 3 * MIB + 1, 8 * MIB + 17]


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for {pid}")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    return _status(pid, "VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Figures:
    seconds: float = 0.0
    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0  # the mount's high-water mark over the whole run
    fds_start: int = 0
    fds_end: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, nbytes: int) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)
            setattr(self, f"{what[:-1]}_bytes", getattr(self, f"{what[:-1]}_bytes") + nbytes)

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(message)

    def report(self) -> str:
        mib = float(MIB)
        return (
            f"soak {self.seconds:.0f}s: {self.reads} reads ({self.read_bytes / mib:.0f} MiB, "
            f"{self.read_bytes / mib / self.seconds:.0f} MiB/s), {self.writes} files written "
            f"({self.write_bytes / mib:.0f} MiB), {len(self.errors)} errors; mount RSS "
            f"{self.rss_start / mib:.0f} -> {self.rss_end / mib:.0f} MiB "
            f"(peak {self.rss_peak / mib:.0f} MiB), open fds "
            f"{self.fds_start} -> {self.fds_end}"
        )


def _reader(blobs: list[tuple[Path, bytes]], stop: float, seed: int, figures: Figures) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        path, data = rng.choice(blobs)
        try:
            if rng.random() < 0.3:
                with open(path, "rb") as file:
                    got = hashlib.file_digest(file, "sha256").hexdigest()
                if got != path.parent.name:
                    figures.fail(f"{path}: sha256 {got}")
                figures.count("reads", len(data))
            else:
                offset = rng.randrange(len(data))
                length = rng.choice([1, 4096, 65_536, 300_000])
                with open(path, "rb") as file:
                    piece = os.pread(file.fileno(), length, offset)
                if piece != data[offset : offset + length]:
                    figures.fail(f"{path}: wrong bytes at {offset}+{length}")
                figures.count("reads", len(piece))
        except OSError as error:
            figures.fail(f"read {path}: {error}")


def _writer(uploads: Path, stop: float, seed: int, figures: Figures) -> None:
    rng = random.Random(seed)
    directory = uploads / f"writer-{seed}"
    directory.mkdir()
    number = 0
    while time.monotonic() < stop:
        number += 1
        data = rng.randbytes(rng.choice([0, 100, 50_000, 700_000, 2 * MIB + 5, 5 * MIB]))
        path = directory / f"f{number % 8}"  # names are reused: replaces of committed files
        try:
            with open(path, "wb") as file:
                for start in range(0, len(data), 128 * 1024):
                    file.write(data[start : start + 128 * 1024])
            expected = str(Digest.of_bytes(data))
            reported = os.getxattr(path, "user.casfs.digest").decode()
            if reported != expected:
                figures.fail(f"{path}: digest {reported}, expected {expected}")
            if path.read_bytes() != data:
                figures.fail(f"{path}: reads back other bytes")
            figures.count("writes", len(data))
        except OSError as error:
            figures.fail(f"write {path}: {error}")


def soak(
    root: Path,
    seconds: float,
    readers: int = 32,
    writers: int = 8,
    cache_size: str = "64M",
    sizes: tuple[int, ...] = tuple(BLOB_SIZES),
) -> Figures:
    """Run the soak in ``root`` for ``seconds``; returns the figures (errors included)."""
    figures = Figures()
    with CasfsServer(root / "store", "--no-fsync") as server:
        local = [random.Random(n).randbytes(size) for n, size in enumerate(sizes)]
        sources = []
        for number, data in enumerate(local):
            sources.append(root / f"blob-{number}")
            sources[-1].write_bytes(data)

        async def upload(client: CasClient) -> list[Digest]:
            return [await client.upload_file(source) for source in sources]

        digests = run_client(server.endpoint, upload)
        args = ["--remote", server.endpoint, "--cache-size", cache_size]
        with CasfsMount(root / "mnt", *args, "--cache-dir", str(root / "cache")) as mount:
            main = mount.mountpoint / "main"
            blobs = [
                (main / "blobs" / d.hash / str(d.size), data)
                for d, data in zip(digests, local, strict=True)
            ]
            figures.fds_start = open_fds(mount.pid)
            started = time.monotonic()
            stop = started + seconds
            threads = [
                threading.Thread(target=_reader, args=(blobs, stop, i, figures))
                for i in range(readers)
            ] + [
                threading.Thread(target=_writer, args=(main / "uploads", stop, i, figures))
                for i in range(writers)
            ]
            for thread in threads:
                thread.start()
            # The cache fills in the first part of the run; memory is measured after that.
            time.sleep(min(5.0, seconds / 4))
            figures.rss_start = rss(mount.pid)
            for thread in threads:
                thread.join(timeout=seconds + 120)
                if thread.is_alive():
                    figures.fail("a worker hung")
            figures.seconds = time.monotonic() - started
            figures.rss_end = rss(mount.pid)
            figures.rss_peak = _status(mount.pid, "VmHWM")
            # Descriptors of work still finishing (a block being written to the disk
            # cache, a spool file being closed) go within moments; a leak stays.
            settle = time.monotonic() + 15.0
            figures.fds_end = open_fds(mount.pid)
            while figures.fds_end > figures.fds_start + 2 and time.monotonic() < settle:
                time.sleep(0.1)
                figures.fds_end = open_fds(mount.pid)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--cache-size", default="64M", help="the mount's --cache-size")
    parser.add_argument(
        "--large",
        action="store_true",
        help="read 48 distinct blobs of 24 MiB (more than a 512M cache holds), not 7 small ones",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casfs-soak-") as root:
        sizes = tuple(24 * MIB + n for n in range(48)) if args.large else tuple(BLOB_SIZES)
        figures = soak(Path(root), args.seconds, args.readers, args.writers, args.cache_size, sizes)
    print(figures.report())
    for error in figures.errors:
        print("error:", error)
    raise SystemExit(1 if figures.errors else 0)


if __name__ == "__main__":
    main()
