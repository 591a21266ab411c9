"""Wiring for ``casfs mount``: clients, block cache, operations, signals, clean unmount.

Lifecycle: ``mount()`` runs in the foreground until the file system is unmounted
(``fusermount3 -u``) or the process gets SIGTERM, SIGINT or SIGHUP; either way it unmounts
and returns normally, so the process exits 0. With no remote configured it first starts a
private ``casfs serve`` on the default store, over a unix socket, and stops it at the end
(the child also dies with us through PR_SET_PDEATHSIG if we are killed).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pyfuse3
import trio

from casfs.cas.client import CasClient
from casfs.cas.errors import CasError
from casfs.config import MountConfig, RemoteConfig, mount_cache_dir
from casfs.digest import DigestFunction
from casfs.fs.blockcache import BlockCache
from casfs.fs.errors import MountError
from casfs.fs.metrics import MountCollector
from casfs.fs.namespace import Namespace
from casfs.fs.operations import CasOperations
from casfs.fs.uploads import Spool, UploadError, Uploads
from casfs.metrics import RpcCollector, serve_metrics_in_trio
from casfs.rpcstats import RpcStats

log = logging.getLogger("casfs.fs")
PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def embedded_server(config: MountConfig) -> Iterator[str]:
    """Run ``casfs serve`` on ``config.store`` over a private unix socket; yield its URL."""
    runtime = Path(tempfile.mkdtemp(prefix="casfs-serve-"))
    socket = runtime / "cas.sock"
    command = [sys.executable, "-m", "casfs", "serve", "--store", str(config.store)]
    command += ["--listen", f"unix:{socket}"]
    for instance in config.instances:
        command += ["--instance", instance]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
        start_new_session=True,  # Ctrl-C at a terminal must reach only the mount
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise MountError(f"the embedded CAS on {config.store} did not start")
        log.info("embedded CAS: store %s", config.store)
        yield f"unix:{socket}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)


def _mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint``, from mountinfo.

    Not ``os.stat``: a stat of our own mountpoint before the FUSE loop runs would wait for
    an answer that only this process can give.
    """
    escaped = str(mountpoint)
    for char in "\\ \t\n":  # mountinfo writes these as octal escapes
        escaped = escaped.replace(char, f"\\{ord(char):03o}")
    device = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4] == escaped:
                device = fields[2]  # the last match is the top of the stack
    return device


def set_readahead(mountpoint: Path, kilobytes: int) -> None:
    """Raise the kernel's readahead for this mount (root only; best effort).

    The default 128 KiB caps FUSE reads at small requests; 1 MiB lets the kernel ask for
    more at once, which is most of the speed of a sequential read.
    """
    device = _mount_device(mountpoint)
    if device is None:
        log.info("could not set readahead: %s not in /proc/self/mountinfo", mountpoint)
        return
    path = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        path.write_text(str(kilobytes))
    except OSError as error:
        log.info("could not set readahead to %d KiB (%s): %s", kilobytes, path, error.strerror)


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {"fsname=casfs", "subtype=casfs"}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    options.update(config.fuse_options)
    return options


async def _digest_functions(clients: dict[str, CasClient]) -> set[DigestFunction]:
    functions: set[DigestFunction] = set()
    for name, client in clients.items():
        try:
            functions |= (await client.capabilities()).digest_functions
        except CasError as error:
            log.warning("instance %r: no capabilities (%s); assuming sha256", name, error)
    return functions


async def _watch_signals(
    signals: AsyncIterator[int], uploads: Uploads, drain_timeout: float
) -> None:
    """On SIGTERM, SIGINT or SIGHUP: let uploads in flight finish (bounded), then stop."""
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        if uploads.active:
            log.info("waiting up to %.0fs for %d upload(s)", drain_timeout, uploads.active)
            with trio.move_on_after(drain_timeout):
                await uploads.idle.wait()
            if uploads.active:
                log.warning("%d upload(s) left spooled for the next mount", uploads.active)
        pyfuse3.terminate()
        return


async def _finish_leftovers(operations: CasOperations) -> None:
    """Upload what a previous mount of this cache directory left in the spool."""
    leftovers = operations.uploads.recover()
    if not leftovers:
        return
    log.info("finishing %d upload(s) left by a previous mount", len(leftovers))
    for entry in leftovers:
        operations.adopt(entry)
    for entry in leftovers:
        try:
            digest = await operations.uploads.finalize(entry)
        except (CasError, UploadError, OSError) as error:
            log.warning("left-over upload %s: %s (still spooled)", entry.label(), error)
        except Exception:  # a background task: nothing may end the mount
            log.exception("left-over upload %s failed unexpectedly (still spooled)", entry.label())
        else:
            operations.catalog.found(entry.instance, digest)


async def serve_mount(config: MountConfig, remote: RemoteConfig, ready: Callable[[], None]) -> None:
    """Mount, call ``ready()``, serve until unmounted or signalled, then unmount."""
    rpc_stats = RpcStats() if config.metrics else None
    clients = {
        name: CasClient(dataclasses.replace(remote, instance=name), rpc_stats=rpc_stats)
        for name in config.instances
    }
    spool: Spool | None = None
    try:
        namespace = Namespace(config.instances, await _digest_functions(clients))
        spool = Spool(config.cache_dir or mount_cache_dir(config.mountpoint))
        # Signals are caught from before the mount exists: one that comes as soon as a
        # supervisor sees the mount must not kill the process and leave the mount stale.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                cache = BlockCache(
                    nursery, block_size=config.block_size, capacity=config.cache_size
                )
                uploads = Uploads(clients, spool)
                operations = CasOperations(
                    clients,
                    namespace,
                    cache,
                    uploads,
                    read_only=config.read_only,
                    remote=remote.endpoint if config.remote else f"embedded CAS on {config.store}",
                )
                if config.metrics and rpc_stats is not None:
                    await nursery.start(
                        serve_metrics_in_trio,
                        config.metrics,
                        MountCollector(operations),
                        RpcCollector(rpc_stats, "client"),
                    )
                await _serve(config, remote.endpoint, operations, nursery, signals, ready)
    finally:
        for client in clients.values():
            await client.aclose()
        if spool is not None:
            spool.close()


async def _serve(
    config: MountConfig,
    endpoint: str,
    operations: CasOperations,
    nursery: trio.Nursery,
    signals: AsyncIterator[int],
    ready: Callable[[], None],
) -> None:
    """Mount ``operations``, run the FUSE loop until it ends, and always unmount."""
    try:
        pyfuse3.init(operations, str(config.mountpoint), fuse_options(config))
    except RuntimeError as error:
        raise MountError(f"cannot mount on {config.mountpoint}: {error}") from None

    async def after_init() -> None:
        # The kernel sets the readahead from INIT's reply: raise it after that.
        await operations.initialized.wait()
        set_readahead(config.mountpoint, config.readahead_kb)

    try:
        log.info("mounted %s on %s", endpoint, config.mountpoint)
        ready()
        nursery.start_soon(after_init)
        nursery.start_soon(_watch_signals, signals, operations.uploads, config.drain_timeout)
        if not config.read_only:
            nursery.start_soon(_finish_leftovers, operations)
        await pyfuse3.main(min_tasks=2, max_tasks=config.max_tasks)
    finally:
        nursery.cancel_scope.cancel()
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)


def _return_freed_blocks_to_the_system() -> None:
    """Make glibc give back the memory of freed blocks at once.

    Blocks of 1 MiB come and go all the time. glibc's default raises its mmap threshold
    after the first free and then keeps such blocks in per-thread arenas, so the RSS
    grows well past the configured cache. A fixed threshold and two arenas keep it bounded.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    libc.mallopt(M_ARENA_MAX, 2)


def mount(config: MountConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Mount in the foreground until unmounted; raises ``MountError`` if it cannot."""
    if not config.mountpoint.is_dir():
        raise MountError(f"mountpoint {config.mountpoint} is not a directory")
    _return_freed_blocks_to_the_system()
    with contextlib.ExitStack() as stack:
        remote = config.remote
        if remote is None:
            remote = RemoteConfig(endpoint=stack.enter_context(embedded_server(config)))
        trio.run(serve_mount, config, remote, ready)
