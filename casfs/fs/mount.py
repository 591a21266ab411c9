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
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pyfuse3
import trio

from casfs import notify
from casfs.cas.assets import AssetClient
from casfs.cas.channel import is_tvix
from casfs.cas.client import CasClient
from casfs.cas.errors import CasError, InvalidArgument, NotFound, PermissionDenied
from casfs.cas.quirks import RemoteQuirks, SizeCheck
from casfs.cas.remote import BlobRemote
from casfs.config import (
    MountConfig,
    RemoteConfig,
    RetryPolicy,
    default_disk_cache_dir,
    mount_cache_dir,
)
from casfs.digest import DigestFunction
from casfs.embedded import EmbeddedError, embedded_server
from casfs.fs.assetcatalog import MountAssets
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.blocks.disk import open_disk_tier
from casfs.fs.errors import MountError
from casfs.fs.journal import Journal
from casfs.fs.metrics import MountCollector
from casfs.fs.mountpoint import (
    clear_stale_mount,
    fuse_options,
    libfuse_says,
    refuse_a_second_mount,
    set_readahead,
)
from casfs.fs.namespace import Namespace
from casfs.fs.nodes.assetpush import push_left_over
from casfs.fs.operations import CasOperations
from casfs.fs.treeview import TreeView
from casfs.fs.tvixmount import check_tvix, keep_passing, tvix_remotes, tvix_tree_sources
from casfs.fs.uploadentries import FileEntry
from casfs.fs.uploads import Spool, UploadError, Uploads
from casfs.prometheus import RpcCollector, serve_metrics_in_trio
from casfs.rpcstats import RpcStats
from casfs.trees.model import TreeLimits

log = logging.getLogger("casfs.fs")
M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


CHECK_TIMEOUT = 10.0  # seconds for one GetCapabilities before mounting; two attempts


async def check_remote(remote: RemoteConfig, instances: Sequence[str]) -> None:
    """Ask the remote for each instance's capabilities, with a short deadline and one
    retry, before anything is mounted: a dead, mistyped or refusing endpoint, or an
    instance the server does not have, raises ``MountError`` naming the endpoint and the
    cause, instead of a mount whose every read fails later. A server without the
    Capabilities service answers UNIMPLEMENTED and passes; so does any other answer."""
    probe = dataclasses.replace(remote, retry=RetryPolicy(attempts=2), rpc_timeout=CHECK_TIMEOUT)
    for name in instances:
        async with CasClient(dataclasses.replace(probe, instance=name)) as client:
            try:
                await client.capabilities()
            except (PermissionDenied, NotFound, InvalidArgument) as error:
                raise MountError(f"{remote.endpoint} refused instance {name!r}: {error}") from None
            except CasError as error:
                if not error.transient:
                    log.warning("%s: %s (mounting all the same)", remote.endpoint, error)
                    continue
                raise MountError(
                    f"cannot reach {remote.endpoint}: {error}\n"
                    "(--no-check-remote, or -o no_check_remote, mounts all the same, for a "
                    "remote that comes up later)"
                ) from None


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
    """Upload what a previous mount of this cache directory left in the spool, then push
    the files given an asset name whose push had not happened yet."""
    leftovers = operations.uploads.recover()
    await _finish_uploads(operations, leftovers)
    await push_left_over(operations.state, operations.uploads.unpushed())


async def _finish_uploads(operations: CasOperations, leftovers: list[FileEntry]) -> None:
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
    tvix = tvix_remotes(remote, config.instances, rpc_stats) if is_tvix(remote.endpoint) else {}
    reapi = {
        name: CasClient(
            dataclasses.replace(remote, instance=name), rpc_stats=rpc_stats, quirks=quirks
        )
        for name in config.instances
        if not tvix
    }
    clients: dict[str, BlobRemote] = {**reapi, **tvix}
    # assets/: Fetch and Push on the same remote; the embedded store's catalog is
    # readable here, so its names can be listed (fs/assetcatalog.py).
    assets = MountAssets(
        {
            name: AssetClient(dataclasses.replace(remote, instance=name), rpc_stats=rpc_stats)
            for name in config.instances
            if not tvix  # tvix has no Remote Asset API: no assets/
        },
        index_root=config.asset_catalog or (config.store if config.remote is None else None),
    )
    spool: Spool | None = None
    names: Journal | None = None
    try:
        if config.remote is not None and config.check_remote:
            await (check_tvix(remote) if tvix else check_remote(remote, config.instances))
        functions = {DigestFunction.BLAKE3} if tvix else await _digest_functions(reapi)
        namespace = Namespace(config.instances, functions)
        cache_dir = config.cache_dir or mount_cache_dir(config.mountpoint)
        spool = Spool(cache_dir)
        # Signals are caught from before the mount exists: one that comes as soon as a
        # supervisor sees the mount must not kill the process and leave the mount stale.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            try:
                async with trio.open_nursery() as nursery:
                    disk = None
                    # The embedded store is on local disk already: a second copy of its
                    # blocks only when --disk-cache asks for one. Keyed by the remote.
                    wanted = config.remote is not None or config.disk_cache is not None
                    if config.use_disk_cache and wanted:
                        where = f"embedded:{config.store.resolve()}"
                        where = remote.endpoint if config.remote else where
                        disk = await open_disk_tier(
                            config.disk_cache or default_disk_cache_dir(),
                            config.disk_cache_size,
                            nursery,
                            where,
                            clients,
                            config.block_size,
                        )
                    cache = BlockCache(
                        nursery, block_size=config.block_size, capacity=config.cache_size, disk=disk
                    )
                    keep_passing(tvix, cache)
                    names = Journal(cache_dir / "names")
                    uploads = Uploads(clients, spool, nursery, names)
                    restored = uploads.restore_names()
                    log.info("names: %d record(s) restored from %s", restored, names.dir)
                    limits = TreeLimits(
                        max_entries=config.tree_max_entries, max_depth=config.tree_max_depth
                    )
                    # trees/: REAPI's, or a tvix castore's where it has a DirectoryService;
                    # actions/ are REAPI's alone.
                    sources = await tvix_tree_sources(
                        tvix, limits, config.tree_cache_size, ask=config.check_remote
                    )
                    trees = (
                        None
                        if tvix and not sources
                        else TreeView(
                            reapi,
                            cache,
                            nursery,
                            limits=limits,
                            cache_bytes=config.tree_cache_size,
                            sources=sources,
                        )
                    )
                    operations = CasOperations(
                        clients,
                        namespace,
                        cache,
                        uploads,
                        trees=trees,
                        read_only=config.read_only,
                        remote=remote.endpoint
                        if config.remote
                        else f"embedded CAS on {config.store}",
                        assets=assets,
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
        for asset_client in assets.clients.values():
            await asset_client.aclose()
        assets.close()
        if names is not None:
            names.close()
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
        with libfuse_says() as said:
            pyfuse3.init(operations, str(config.mountpoint), options)
    except RuntimeError as error:
        why = re.sub(r"`([^']*)'", r"\1", "; ".join(said)) or str(error)  # `-o x' -> -o x
        raise MountError(
            f"cannot mount on {config.mountpoint}: {why} (FUSE options: "
            f"{','.join(sorted(options))})"
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
        operations.uploads.save_names()  # the journal folded into a snapshot
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
    refuse_a_second_mount(config.mountpoint)
    if not config.mountpoint.is_dir():
        raise MountError(f"mountpoint {config.mountpoint} is not a directory")
    _tune_malloc_for_blocks()
    with contextlib.ExitStack() as stack:
        remote = config.remote
        if remote is None:
            try:
                endpoint = stack.enter_context(embedded_server(config.store, config.instances))
            except EmbeddedError as error:
                raise MountError(str(error)) from None
            log.info("embedded CAS: store %s", config.store)
            remote = RemoteConfig(endpoint=endpoint)
        trio.run(serve_mount, config, remote, ready)
