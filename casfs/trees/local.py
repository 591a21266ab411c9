"""Trees on the local disk: ``casfs put -r`` (a directory scanned, hashed and uploaded as
REAPI Directories, encoded by ``encode.py`` as ``uploads/`` encodes them) and ``casfs get
-r`` (a tree materialized: contents, executable bits, symlinks, empty directories).

Safety of ``materialize``: every name comes from a Directory checked by ``model.py`` (one
path segment, unique in its directory), the tree is written into a new private directory
beside the destination that is renamed into place only when complete (a failure removes
it and leaves nothing), files are created with ``O_EXCL | O_NOFOLLOW`` and symlinks as
symlinks: nothing is ever written through a symlink, and no path leaves the destination.

Cancellation (Ctrl-C) cancels the call in flight; a partial ``get`` is removed, a partial
``put`` leaves on the server the blobs it finished (they are content-addressed: harmless).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from casfs.cas.client import CasClient
from casfs.cas.errors import DataLoss
from casfs.digest import Digest, DigestBuilder, DigestFunction, digest_file
from casfs.trees import encode
from casfs.trees.model import BadDirectory, Directory, TooDeep
from casfs.trees.smallfiles import SMALL_FILE, fetch_small, pack
from casfs.trees.source import TreeSource


@dataclass(slots=True)
class Scanned:
    """A local directory as REAPI blobs: its root digest, one path per file content, and
    every Directory's bytes (children before parents)."""

    root: Digest
    files: dict[Digest, Path] = field(default_factory=dict)
    directories: dict[Digest, bytes] = field(default_factory=dict)


def _encoded(name: str, path: Path) -> str:
    try:
        name.encode()
    except UnicodeEncodeError:
        message = "the name is not UTF-8, which REAPI names must be"
        raise OSError(errno.EINVAL, message, str(path)) from None
    return name


def scan(root: Path, function: DigestFunction = DigestFunction.SHA256) -> Scanned:
    """Hash the tree at ``root`` (blocking: run it in a thread). Symlinks are read, never
    followed; anything but files, directories and symlinks is an ``OSError``."""
    out = Scanned(Digest.empty(function))

    def directory(path: Path) -> Digest:
        entries: list[tuple[str, encode.Entry]] = []
        with os.scandir(path) as listing:
            items = sorted(listing, key=lambda e: e.name)
        for item in items:
            child = Path(item.path)
            name = _encoded(item.name, child)
            mode = item.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                target = _encoded(os.readlink(child), child)
                entries.append((name, encode.SymlinkEntry(target)))
            elif stat.S_ISDIR(mode):
                entries.append((name, encode.DirectoryEntry(directory(child))))
            elif stat.S_ISREG(mode):
                digest = digest_file(child, function)
                out.files.setdefault(digest, child)
                entries.append((name, encode.FileEntry(digest, bool(mode & 0o111))))
            else:
                raise OSError(errno.EINVAL, "not a file, directory or symlink", str(child))
        data = encode.directory_bytes(entries)
        digest = Digest.of_bytes(data, function)
        out.directories[digest] = data
        return digest

    out.root = directory(root)
    return out


async def put_tree(
    client: CasClient, root: Path, function: DigestFunction = DigestFunction.SHA256
) -> Digest:
    """Upload the tree at ``root`` unless the CAS has its parts; returns the root
    Directory's digest. Files go first, then Directories, so a Directory the server
    holds never names a blob it lacks. A file that changes while it is uploaded fails the
    call (``DataLoss``, or the server's refusal of a mismatched write)."""
    scanned = await trio.to_thread.run_sync(scan, root, function)
    missing = await client.find_missing([*scanned.files, *scanned.directories])
    budget = (await client.capabilities()).batch_budget()
    limit = min(budget, SMALL_FILE)
    small = {d for d in scanned.files if d in missing and 0 < d.size <= limit}
    for run in pack(small, budget):
        blobs = await trio.to_thread.run_sync(_read_files, scanned, run)
        await client.batch_update(blobs)
    for digest, path in scanned.files.items():
        if digest in missing and digest.size > 0 and digest not in small:
            await client.write(digest, path)
    await _put_directories(client, scanned, missing, budget)
    return scanned.root


def _read_files(scanned: Scanned, run: list[Digest]) -> list[tuple[Digest, bytes]]:
    blobs = []
    for digest in run:
        data = scanned.files[digest].read_bytes()
        if Digest.of_bytes(data, digest.function) != digest:
            raise DataLoss(f"{scanned.files[digest]} changed while it was being uploaded")
        blobs.append((digest, data))
    return blobs


async def _put_directories(
    client: CasClient, scanned: Scanned, missing: set[Digest], budget: int
) -> None:
    wanted = [d for d in scanned.directories if d in missing]  # children before parents
    small = [d for d in wanted if d.size <= budget]
    for run in pack(small, budget):
        await client.batch_update([(d, scanned.directories[d]) for d in run])
    for digest in wanted:
        if digest.size > budget:  # a huge Directory: written from a file, as blobs are
            with tempfile.NamedTemporaryFile(prefix="casfs-dir-") as spool:
                spool.write(scanned.directories[digest])
                spool.flush()
                await client.write(digest, spool.name)


# -- get -r ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    directories: list[tuple[Path, Directory]] = field(default_factory=list)
    files: dict[Digest, list[tuple[Path, bool, int | None]]] = field(default_factory=dict)


async def _plan(source: TreeSource, root: Digest, base: Path) -> _Plan:
    """Every Directory of the tree with where it goes, a level at a time."""
    plan = _Plan()
    level = [(base, root)]
    depth = 0
    entries = 0
    while level:
        await source.directories(d for _, d in level)
        below: list[tuple[Path, Digest]] = []
        for path, digest in level:
            directory = await source.directory(digest)
            plan.directories.append((path, directory))
            entries += len(directory.entries)
            if entries > source.limits.max_total_entries:
                limit = source.limits.max_total_entries
                raise BadDirectory(f"tree {root}: more than {limit} entries in all")
            for node in directory.files:
                where = (path / node.name, node.executable, node.mtime_ns)
                plan.files.setdefault(node.digest, []).append(where)
            below.extend((path / node.name, node.digest) for node in directory.directories)
        depth += 1
        if below and depth > source.limits.max_depth:
            raise TooDeep(f"tree {root}: deeper than {source.limits.max_depth} directories")
        level = below
    return plan


def _create(path: Path, executable: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o777 if executable else 0o666)


def _write_all(places: list[tuple[Path, bool, int | None]], data: bytes) -> None:
    for path, executable, mtime in places:
        fd = _create(path, executable)
        with open(fd, "wb") as out:
            out.write(data)
        if mtime is not None:
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def _make_directories(plan: _Plan) -> None:
    for path, directory in plan.directories:
        if path != plan.directories[0][0]:
            os.mkdir(path, 0o777)
        for link in directory.symlinks:
            os.symlink(link.target, path / link.name)
            if link.mtime_ns is not None:
                os.utime(path / link.name, ns=(link.mtime_ns,) * 2, follow_symlinks=False)


def _set_directory_times(plan: _Plan) -> None:
    for path, directory in reversed(plan.directories):
        if directory.mtime_ns is not None:
            os.utime(path, ns=(directory.mtime_ns,) * 2, follow_symlinks=False)


async def _large(
    client: CasClient, digest: Digest, places: list[tuple[Path, bool, int | None]]
) -> None:
    """A large file streamed to its first place, hashed as it lands, then copied."""
    first, executable, mtime = places[0]
    fd = _create(first, executable)
    builder = DigestBuilder(digest.function)
    with open(fd, "wb") as out:
        async for chunk in client.stream(digest):
            builder.update(chunk)
            await trio.to_thread.run_sync(out.write, chunk)
    if builder.digest() != digest:
        raise DataLoss(f"{digest}: the bytes fetched do not match")
    if mtime is not None:
        os.utime(first, ns=(mtime, mtime))
    for path, executable, mtime in places[1:]:
        await trio.to_thread.run_sync(_copy, first, path, executable, mtime)


def _copy(source: Path, path: Path, executable: bool, mtime: int | None) -> None:
    fd = _create(path, executable)
    with open(source, "rb") as src, open(fd, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


async def materialize(source: TreeSource, root: Digest, destination: Path) -> int:
    """Write the tree ``root`` as ``destination`` (which must not exist, or be an empty
    directory); returns the files written. Errors as ``TreeSource.directory`` raises them,
    ``DataLoss`` for file contents that do not match, ``OSError`` from the disk; on any
    of them nothing is left at ``destination``."""
    destination = Path(os.path.abspath(destination))
    if destination.is_symlink() or (destination.exists() and not _empty_dir(destination)):
        raise FileExistsError(
            errno.EEXIST, "exists and is not an empty directory", str(destination)
        )
    await source.prefetch(root)
    work = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    )
    try:
        plan = await _plan(source, root, work)
        await trio.to_thread.run_sync(_make_directories, plan)
        small = {d: p for d, p in plan.files.items() if d.size <= SMALL_FILE}

        async def store(digest: Digest, data: bytes) -> None:
            await trio.to_thread.run_sync(_write_all, small.pop(digest), data)

        await fetch_small(source.client, [d for d in small if d.size > 0], store)
        for digest in [d for d in small if d.size == 0]:
            await trio.to_thread.run_sync(_write_all, small.pop(digest), b"")
        for digest, places in plan.files.items():
            if digest.size > SMALL_FILE:
                await _large(source.client, digest, places)
        await trio.to_thread.run_sync(_set_directory_times, plan)
        os.chmod(work, 0o777 & ~_umask())
        if destination.exists():
            destination.rmdir()
        os.rename(work, destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sum(len(p) for p in plan.files.values())


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(True for _ in _listing(path))


def _listing(path: Path) -> Iterator[str]:
    with os.scandir(path) as entries:
        for entry in entries:
            yield entry.name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
