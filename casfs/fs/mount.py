"""Wiring for ``casfs mount``: clients, block cache, operations, signals, clean unmount.

Lifecycle: ``mount()`` runs in the foreground until the file system is unmounted
(``fusermount3 -u``) or the process gets SIGTERM, SIGINT or SIGHUP; either way it unmounts
and returns normally, so the process exits 0. With no remote configured it first starts a
private ``casfs serve`` on the default store, over a unix socket, and stops it at the end
(the child also dies with us through PR_SET_PDEATHSIG if we are killed).

Under a service manager (``$NOTIFY_SOCKET``, see ``casfs.notify``) it sends READY=1 once
the kernel's INIT is answered, so the mount answers by then, and STOPPING=1 when it
begins to unmount. A stale mount left on the mountpoint by a process that died (stat
fails with ENOTCONN) is lazily unmounted first, so a restart after a crash works.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pyfuse3
import trio

from casfs import notify
from casfs.cas.client import CasClient
from casfs.cas.errors import CasError
from casfs.cas.quirks import RemoteQuirks, SizeCheck
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
M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
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
        env=notify.without_notify_socket(dict(os.environ)),  # its READY=1 is not ours
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
    """The FUSE mount options; an ``fsname=``/``subtype=`` given by the user replaces ours
    (``mount.casfs`` names the mount after its source, as ``mount`` and ``df`` show it)."""
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    given = {option.partition("=")[0] for option in config.fuse_options}
    options |= {f"{key}=casfs" for key in ("fsname", "subtype") if key not in given}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    options.update(config.fuse_options)
    return options


def clear_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount a FUSE mount whose process died (stat says ENOTCONN), and nothing
    else: a live mount answers stat and is left alone (mounting fails on top of it)."""
    try:
        mountpoint.stat()
    except OSError as error:
        if error.errno != errno.ENOTCONN:
            return
    else:
        return
    log.warning("%s: a stale mount (its process died); unmounting it", mountpoint)
    result = subprocess.run(
        ["fusermount3", "-uz", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MountError(f"cannot clear the stale mount on {mountpoint}: {result.stderr.strip()}")


async def _digest_functions(clients: dict[str, CasClient]) -> set[DigestFunction]:
    functions: set[DigestFunction] = set()
    for name, client in clients.items():
        try:
            functions |= (await client.capabilities()).digest_functions
        except CasError as error:
            log.warning("instance %r: no capabilities (%s); assuming sha256", name, error)
    return functions


async def _watch_signals(
    signals: AsyncIterator[int], uploads: Uploads, drain_timeout: float, mountpoint: Path
) -> None:
    """On SIGTERM, SIGINT or SIGHUP: let uploads in flight finish (bounded), then stop."""
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        notify.stopping(f"unmounting {mountpoint}")
        deadline = trio.current_time() + drain_timeout  # one bound for both waits
        if uploads.active:
            log.info("waiting up to %.0fs for %d upload(s)", drain_timeout, uploads.active)
            notify.status(f"unmounting {mountpoint}: waiting for {uploads.active} upload(s)")
            with trio.move_on_at(deadline):
                await uploads.idle.wait()
            if uploads.active:
                log.warning("%d upload(s) left spooled for the next mount", uploads.active)
        with trio.move_on_at(deadline):
            await uploads.settle_all()  # writes answered but not in their spool files yet
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
    """Mount, call ``ready()`` once the mount answers, serve until unmounted or signalled,
    then unmount."""
    rpc_stats = RpcStats() if config.metrics else None
    # One remote: its habits are learned once. The embedded server checks sizes.
    quirks = RemoteQuirks(
        remote.endpoint,
        may_store_probe=not config.read_only,
        size_check=SizeCheck.UNKNOWN if config.remote else SizeCheck.BY_DIGEST,
    )
    clients = {
        name: CasClient(
            dataclasses.replace(remote, instance=name), rpc_stats=rpc_stats, quirks=quirks
        )
        for name in config.instances
    }
    spool: Spool | None = None
    try:
        namespace = Namespace(config.instances, await _digest_functions(clients))
        spool = Spool(config.cache_dir or mount_cache_dir(config.mountpoint))
        # Signals are caught from before the mount exists: one that comes as soon as a
        # supervisor sees the mount must not kill the process and leave the mount stale.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            try:
                async with trio.open_nursery() as nursery:
                    cache = BlockCache(
                        nursery, block_size=config.block_size, capacity=config.cache_size
                    )
                    uploads = Uploads(clients, spool, nursery)
                    operations = CasOperations(
                        clients,
                        namespace,
                        cache,
                        uploads,
                        read_only=config.read_only,
                        remote=remote.endpoint
                        if config.remote
                        else f"embedded CAS on {config.store}",
                    )
                    if config.metrics and rpc_stats is not None:
                        await nursery.start(
                            serve_metrics_in_trio,
                            config.metrics,
                            MountCollector(operations),
                            RpcCollector(rpc_stats, "client"),
                        )
                    await _serve(config, remote.endpoint, operations, nursery, signals, ready)
            except* MountError as group:  # the mount failed: a message, not a traceback
                raise group.exceptions[0] from None
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
    options = fuse_options(config)
    try:
        pyfuse3.init(operations, str(config.mountpoint), options)
    except RuntimeError as error:
        raise MountError(
            f"cannot mount on {config.mountpoint} with -o {','.join(sorted(options))}: {error}"
        ) from None

    source = endpoint if config.remote else f"the embedded CAS in {config.store}"

    async def after_init() -> None:
        # INIT's reply has gone out once this task runs: from here on the mount answers.
        # The kernel sets the readahead from that reply: raise it after that.
        await operations.initialized.wait()
        set_readahead(config.mountpoint, config.readahead_kb)
        ready()
        notify.ready(f"mounted {source} at {config.mountpoint}")

    try:
        log.info("mounted %s on %s", endpoint, config.mountpoint)
        nursery.start_soon(after_init)
        nursery.start_soon(
            _watch_signals, signals, operations.uploads, config.drain_timeout, config.mountpoint
        )
        if not config.read_only:
            nursery.start_soon(_finish_leftovers, operations)
        await pyfuse3.main(min_tasks=2, max_tasks=config.max_tasks)
        with trio.move_on_after(config.drain_timeout):
            await operations.uploads.settle_all()  # after a lazy unmount, files may be open
    finally:
        nursery.cancel_scope.cancel()
        notify.stopping(f"unmounting {config.mountpoint}")
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)


def _tune_malloc_for_blocks() -> None:
    """Keep 1 MiB blocks in one reused heap instead of fresh memory each time.

    Blocks of 1 MiB come and go all the time, allocated by grpc's threads and freed by
    trio's. glibc's defaults keep them in per-thread arenas, so the RSS grows well past the
    configured cache; mapping each block on its own (a low mmap threshold) bounds the RSS
    but costs 256 page faults per block, a quarter of the mount's CPU on a cold read. One
    arena, blocks kept in the heap (the threshold's maximum is 32 MiB) and freed memory
    trimmed only past 64 MiB give both: the LRU's evictions leave holes the next blocks
    fill, and the RSS stays within the cache's bound (measured: 2 GiB streamed through a
    64 MiB cache peaks at about 120 MiB).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    libc.mallopt(M_ARENA_MAX, 1)


def mount(config: MountConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Mount in the foreground until unmounted; raises ``MountError`` if it cannot."""
    clear_stale_mount(config.mountpoint)
    if not config.mountpoint.is_dir():
        raise MountError(f"mountpoint {config.mountpoint} is not a directory")
    _tune_malloc_for_blocks()
    with contextlib.ExitStack() as stack:
        remote = config.remote
        if remote is None:
            remote = RemoteConfig(endpoint=stack.enter_context(embedded_server(config)))
        trio.run(serve_mount, config, remote, ready)
