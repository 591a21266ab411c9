"""``casfs mount``: its options, the ``MountConfig`` made from them and a named remote,
and the foreground or daemon run (the mount itself is ``casfs.fs``'s, imported only
here and only when run: a missing pyfuse3 fails this command alone)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from casfs.cli.connect import apply_remote, named_remote
from casfs.cli.options import connection_options, metrics_option, remote_config, size
from casfs.config import (
    DEFAULT_DISK_CACHE_SIZE,
    DEFAULT_INSTANCE,
    ConfigError,
    MountConfig,
    default_cache_dir,
    default_disk_cache_dir,
    default_store_dir,
)
from casfs.remotes import config_file, find_remote, load_remotes
from casfs.resource import validate_instance_name
from casfs.trees.model import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES
from casfs.trees.source import DEFAULT_CACHE_BYTES

if TYPE_CHECKING:
    from casfs.cli.parser import Commands

EXAMPLES = """\
  casfs mount ~/cas                             # the embedded store; Ctrl-C unmounts
  casfs mount --remote grpc://cas.corp:8980 --instance main --instance ci ~/cas
  casfs mount --remote grpcs://cas.example:443 --token-file ~/.cas-token --read-only ~/cas
  casfs mount --daemon --metrics 9100 ~/cas     # detach; Prometheus on 127.0.0.1:9100
"""


def register(commands: Commands) -> None:
    mount = commands.add(
        "mount",
        examples=EXAMPLES,
        run=run,
        help="mount a CAS as a directory",
        description="Mount a CAS: <mountpoint>/<instance>/blobs/<hash>/<size> is a blob. "
        "Runs in the foreground until unmounted (fusermount3 -u, Ctrl-C, SIGTERM). "
        "NAME is a remote of the config file (its settings, overridden by the flags given); "
        "alone it mounts at the remote's mountpoint. One argument that names no remote, or "
        "has a '/', is the MOUNTPOINT.",
    )
    mount.add_argument("target", metavar="NAME|MOUNTPOINT")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", type=Path)
    mount.add_argument(
        "--remote",
        help="CAS endpoint, or a remote NAME of the config file (default: the embedded CAS)",
    )
    mount.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="NAME",
        help=f"instance name to show (repeatable; default {DEFAULT_INSTANCE!r}; '' for the empty"
        " name, whose blobs/ sits at the mount's root)",
    )
    mount.add_argument("--store", type=Path, help=f"embedded store ({default_store_dir()})")
    mount.add_argument(
        "--asset-catalog",
        type=Path,
        metavar="STORE",
        help="list assets/ from this casfs store's catalog (the remote's, on this machine; "
        "the embedded store's by default)",
    )
    mount_options(mount)
    mount.add_argument("--daemon", action="store_true", help="detach once mounted")
    mount.add_argument("--log-file", type=Path, help="with --daemon: where to log")
    metrics_option(mount)
    connection_options(mount)


def mount_options(mount: argparse.ArgumentParser) -> None:
    """The mount's own options: its spool, caches and FUSE settings (``mount_config``
    turns them into ``MountConfig``; ``casfs.mounthelper`` maps mount(8)'s onto them)."""
    mount.add_argument(
        "--cache-dir", type=Path, help=f"upload spool (one per mountpoint in {default_cache_dir()})"
    )
    flag = argparse.BooleanOptionalAction
    mount.add_argument(
        "--check-remote",
        action=flag,
        help="before mounting, make sure the remote answers (default); --no-check-remote "
        "mounts a remote that comes up later",
    )
    mount.add_argument("--read-only", action=flag, help="mount read-only")
    mount.add_argument("--allow-other", action=flag, help="let other users in")
    mount.add_argument("--cache-size", type=size, help="block cache (512M)")
    mount.add_argument("--block-size", type=size, help="fetch unit (1M)")
    mount.add_argument("--readahead", type=int, metavar="KIB", help="kernel readahead (1024)")
    # The disk cache (fs/blocks/disk.py): keep these three together.
    mount.add_argument(
        "--disk-cache",
        type=Path,
        metavar="DIR",
        help=f"keep blocks read from the remote on disk here, shared by every mount of the "
        f"same remote and instance ({default_disk_cache_dir()})",
    )
    mount.add_argument(
        "--disk-cache-size",
        type=size,
        metavar="SIZE",
        help=f"the disk cache's size; least recently used blocks go first "
        f"({DEFAULT_DISK_CACHE_SIZE >> 30}G)",
    )
    mount.add_argument(
        "--no-disk-cache", action="store_true", default=None, help="keep no blocks on disk"
    )
    # trees/ and actions/: what a hostile tree may make the mount hold.
    mount.add_argument(
        "--tree-max-entries",
        type=int,
        metavar="N",
        help=f"entries one Directory may have; more is EIO ({DEFAULT_MAX_ENTRIES})",
    )
    mount.add_argument(
        "--tree-max-depth",
        type=int,
        metavar="N",
        help=f"directories below a tree's root; deeper is EIO ({DEFAULT_MAX_DEPTH})",
    )
    mount.add_argument(
        "--tree-cache-size",
        type=size,
        metavar="SIZE",
        help=f"Directories kept in memory ({DEFAULT_CACHE_BYTES >> 20}M)",
    )
    mount.add_argument(
        "-o", dest="options", action="append", default=[], help="FUSE mount options, a,b,c"
    )


def _mount_target(args: argparse.Namespace) -> Path:
    """Apply the named remote of ``casfs mount [NAME] MOUNTPOINT``; return the mountpoint."""
    if args.mountpoint is not None:  # NAME MOUNTPOINT
        apply_remote(args, find_remote(args.target, args.config))
        mountpoint: Path = args.mountpoint
    else:
        path = config_file(args.config) if "/" not in args.target else None
        remote = load_remotes(path).get(args.target) if path else None
        if remote is None:
            mountpoint = Path(args.target)
        elif remote.mountpoint is None:
            raise ConfigError(
                f"{remote.source}: [remotes.{remote.name!r}] names no 'mountpoint': "
                f"casfs mount {remote.name} MOUNTPOINT"
            )
        else:
            apply_remote(args, remote)
            mountpoint = remote.mountpoint
    named_remote(args)
    return mountpoint


def mount_config(args: argparse.Namespace) -> MountConfig:
    """The mount's settings from the flags and a named remote (``ConfigError`` if bad)."""
    mountpoint = _mount_target(args)
    options = tuple(o for group in args.options for o in group.split(",") if o)
    for instance in args.instance:
        validate_instance_name(instance)
    sizes = {
        field: value
        for field, value in (
            ("cache_size", args.cache_size),
            ("block_size", args.block_size),
            ("readahead_kb", args.readahead),
            ("disk_cache_size", args.disk_cache_size),
            ("tree_max_entries", args.tree_max_entries),
            ("tree_max_depth", args.tree_max_depth),
            ("tree_cache_size", args.tree_cache_size),
        )
        if value is not None
    }
    return MountConfig(
        mountpoint=mountpoint.expanduser().resolve(),
        remote=remote_config(args, "") if args.remote else None,
        instances=tuple(dict.fromkeys(args.instance or [DEFAULT_INSTANCE])),
        store=args.store or default_store_dir(),
        cache_dir=args.cache_dir,
        read_only=bool(args.read_only) or "ro" in options,
        allow_other=bool(args.allow_other),
        fuse_options=tuple(o for o in options if o != "ro"),
        **sizes,
        metrics=args.metrics,
        check_remote=args.check_remote is not False,
        disk_cache=args.disk_cache,
        use_disk_cache=not args.no_disk_cache,
        asset_catalog=getattr(args, "asset_catalog", None),
    )


def run(args: argparse.Namespace) -> int:
    """Mount in the foreground, or with --daemon detach once the mount is up."""
    from casfs.fs.daemon import daemonize
    from casfs.fs.loader import load_mount

    run_mount = load_mount()

    config = mount_config(args)
    if not args.daemon:
        run_mount(config)
        return 0
    log_file = args.log_file or config.store.parent / "mount.log"
    with daemonize(log_file) as ready:
        run_mount(config, ready)
    return 0
