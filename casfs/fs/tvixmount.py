"""What a mount of a tvix castore remote does differently from a REAPI one: its remotes
(``TvixRemote``, one per instance directory, all of them the server's one store: tvix
has no instance names), its check before mounting, the block cache keeping what
streams past a read, and its Directories (``trees/blake3/``) where the server has a
DirectoryService.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence

import trio

from casfs.cas.errors import CasError, NotFound, Unimplemented
from casfs.cas.tvixremote import TvixRemote
from casfs.config import RemoteConfig, RetryPolicy
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.errors import MountError
from casfs.rpcstats import RpcStats
from casfs.trees.model import TreeLimits
from casfs.trees.tvixsource import TvixTreeSource

log = logging.getLogger("casfs.fs")

CHECK_TIMEOUT = 10.0  # seconds for the Stat before mounting; two attempts


def tvix_remotes(
    remote: RemoteConfig, instances: Sequence[str], rpc_stats: RpcStats | None
) -> dict[str, TvixRemote]:
    """One ``TvixRemote`` per instance directory (each its own channel, as REAPI's)."""
    return {
        name: TvixRemote(dataclasses.replace(remote, instance=name), rpc_stats=rpc_stats)
        for name in instances
    }


async def check_tvix(remote: RemoteConfig) -> None:
    """One Stat with a short deadline and one retry before anything is mounted: a dead,
    mistyped or refusing endpoint, or one with no BlobService, is a ``MountError`` naming
    the endpoint and the cause. NOT_FOUND is the answer of a working server."""
    probe = dataclasses.replace(remote, retry=RetryPolicy(attempts=2), rpc_timeout=CHECK_TIMEOUT)
    checker = TvixRemote(probe)
    try:
        await checker.check()
    except NotFound:  # pragma: no cover - check() takes it as the good answer
        pass
    except CasError as error:
        hint = (
            "\n(--no-check-remote, or -o no_check_remote, mounts all the same, for a "
            "remote that comes up later)"
            if error.transient
            else ""
        )
        raise MountError(f"cannot use {remote.endpoint} as a tvix castore: {error}{hint}") from None
    finally:
        await checker.aclose()


def keep_passing(remotes: dict[str, TvixRemote], cache: BlockCache) -> None:
    """Blocks that stream past a read (tvix reads a blob from its start) go to the cache."""
    for remote in remotes.values():
        remote.keep_passing(cache.block_size, functools.partial(cache.offer, remote))


async def has_directories(remote: TvixRemote) -> bool:
    """Whether the server answers DirectoryService: one Get of a Directory nobody has
    (NOT_FOUND: yes; UNIMPLEMENTED: no). A server that cannot be asked now (down, slow:
    ``CHECK_TIMEOUT``) counts as having one: its trees' lookups then report the cause."""
    with trio.move_on_after(CHECK_TIMEOUT):
        try:
            stream = remote.tvix.get_directories(bytes(32))
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for _ in stream:
                    break
        except Unimplemented:
            log.info("%s has no tvix DirectoryService: no trees/", remote.config.endpoint)
            return False
        except CasError:
            pass
    return True


async def tvix_tree_sources(
    remotes: Mapping[str, TvixRemote], limits: TreeLimits, cache_bytes: int, *, ask: bool = True
) -> dict[str, TvixTreeSource]:
    """The Directories of each instance (over its remote's client), if the server has a
    DirectoryService (asked once, unless not ``ask``: a mount told not to check its
    remote, which may be down at mount time, shows ``trees/`` without waiting for the
    answer); none for a REAPI mount (no ``remotes``)."""
    if not remotes or (ask and not await has_directories(next(iter(remotes.values())))):
        return {}
    return {
        name: TvixTreeSource(remote.tvix, limits=limits, cache_bytes=cache_bytes)
        for name, remote in remotes.items()
    }
