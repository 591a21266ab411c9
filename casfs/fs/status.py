"""The status of a running mount: a JSON document on a read-only xattr of the mount's root.

Why an extended attribute: ``casfs status MOUNTPOINT`` has to work for whoever can see the
mount and must need no port, socket or file elsewhere. ``user.casfs.status`` on the mount's
root does that: it lives in the mount itself, so it always names the right process however
many mounts there are; the kernel lets exactly those in who may use the mount (other users
too with ``allow_other``); ``ls``, ``find`` and backups that ask for no xattrs never see it;
and ``getfattr -n user.casfs.status --only-values MNT`` reads it without casfs. A hidden
control file would show up in listings and be read by every tool that walks the tree.

The mount side (``StatusAttribute``) renders the document at most once a second:
``getfattr`` asks for the size and then for the value, and the two must agree. The reading
side (``read_status``, ``format_status``) runs in ``casfs status`` and needs no FUSE.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from casfs import __version__
from casfs.fs.stats import Snapshot, StatsSource

STATUS_XATTR = "user.casfs.status"
RENDER_INTERVAL = 1.0
# Negative answers that are part of normal use, not errors: a name looked up that does not
# exist, an attribute asked for that is not there.
ORDINARY_ANSWERS = frozenset({("lookup", errno.ENOENT), ("getxattr", errno.ENODATA)})


def document(stats: Snapshot) -> dict[str, Any]:
    """Everything ``casfs status`` shows, from a snapshot of a running mount's counters."""
    lookups = stats.hits + stats.waits + stats.direct_reads
    errors: dict[str, int] = {}
    for (op, code), count in stats.errors.items():
        if (op, code) not in ORDINARY_ANSWERS:
            name = errno.errorcode.get(code, str(code))
            errors[name] = errors.get(name, 0) + count
    return {
        "version": __version__,
        "pid": os.getpid(),
        "remote": stats.remote,
        "instances": stats.instances,
        "read_only": stats.read_only,
        "started": stats.started,
        "uptime_seconds": round(time.time() - stats.started, 3),
        "cache": {
            "capacity_bytes": stats.cache_capacity,
            "used_bytes": stats.cache_used,
            "block_size": stats.block_size,
            "hits": stats.hits,
            "waits": stats.waits,
            "misses": stats.misses,
            "direct_reads": stats.direct_reads,
            "prefetched_blocks": stats.prefetches,
            "evictions": stats.evictions,
            "hit_rate": round(stats.hits / lookups, 4) if lookups else None,
        },
        "disk_cache": stats.disk.status() if stats.disk is not None else None,
        "cas": {
            "fetched_bytes": stats.fetched_bytes,
            "uploaded_bytes": stats.uploaded_bytes,
        },
        "fuse": {
            "read_bytes": stats.fuse_read_bytes,
            "written_bytes": stats.fuse_written_bytes,
            "ops": dict(sorted(stats.ops.items())),
        },
        "uploads": {
            "in_flight": stats.uploads_in_flight,
            "committed": stats.committed,
            "deduplicated": stats.deduplicated,
            "failed": stats.failed,
            "recovered": stats.recovered,
            "resumed": stats.resumed,
        },
        "assets": stats.assets,
        "errors": dict(sorted(errors.items())),
    }


class StatusAttribute:
    """The value of ``user.casfs.status``, rendered at most once per ``RENDER_INTERVAL``."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source
        self._value = b""
        self._rendered = -RENDER_INTERVAL

    def value(self) -> bytes:
        now = time.monotonic()
        if now - self._rendered >= RENDER_INTERVAL:
            self._value = json.dumps(document(self._source.snapshot())).encode()
            self._rendered = now
        return self._value


class StatusError(Exception):
    """``casfs status`` cannot read a mount's status; the message says why."""


def read_status(mountpoint: Path) -> dict[str, Any]:
    """The status document of the casfs mount at ``mountpoint``."""
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StatusError(
                f"{mountpoint} is not a casfs mount (give the mountpoint itself)"
            ) from None
        if error.errno == errno.ENOTCONN:
            raise StatusError(
                f"{mountpoint}: the mount's process is gone; fusermount3 -u {mountpoint}"
            ) from None
        raise StatusError(f"{mountpoint}: {error.strerror}") from None
    try:
        document = json.loads(raw)
    except ValueError:
        raise StatusError(f"{mountpoint}: {STATUS_XATTR} is not a casfs status") from None
    if not isinstance(document, dict) or "cache" not in document:
        raise StatusError(f"{mountpoint}: {STATUS_XATTR} is not a casfs status")
    return document


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h{minutes:02d}m{secs:02d}s" if hours or days else f"{minutes}m{secs:02d}s"
    return f"{days}d{text}" if days else text


def _disk_line(disk: dict[str, int] | None) -> str:
    if disk is None:
        return "off"
    return (
        f"{_bytes(disk['used_bytes'])} of {_bytes(disk['capacity_bytes'])} used, "
        f"{disk['hits']} hits, {disk['misses']} misses, {disk['evictions']} evictions, "
        f"{disk['corrupt']} corrupt, {disk['skipped_writes']} writes skipped"
    )


def _assets_line(assets: dict[str, Any] | None) -> str:
    if not assets:
        return "none"
    if assets["api"] != "available":
        return f"unavailable: {assets['reason']}"
    catalog = f", catalog {assets['catalog']}" if assets.get("catalog") else ""
    return f"{assets['fetches']} fetches, {assets['pushes']} pushes{catalog}"


def format_status(mountpoint: Path, status: dict[str, Any]) -> str:
    """The status for a person: one line per subject."""
    cache, cas, fuse, uploads = status["cache"], status["cas"], status["fuse"], status["uploads"]
    rate = cache["hit_rate"]
    errors = ", ".join(f"{name} {count}" for name, count in status["errors"].items())
    instances = ", ".join(name or repr(name) for name in status["instances"])
    lines = [
        ("mount", f"{mountpoint} (pid {status['pid']}, casfs {status['version']}"
         + (", read-only)" if status["read_only"] else ")")),
        ("remote", status["remote"]),
        ("instances", instances),
        ("uptime", _duration(status["uptime_seconds"])),
        ("cache", f"{_bytes(cache['used_bytes'])} of {_bytes(cache['capacity_bytes'])} used, "
         + (f"hit rate {rate:.1%}" if rate is not None else "no reads yet")
         + f" ({cache['hits']} hits, {cache['waits']} waits, {cache['direct_reads']} direct"
         f" reads), {cache['evictions']} evictions"),
        ("disk cache", _disk_line(status.get("disk_cache"))),
        ("from the CAS", f"{_bytes(cas['fetched_bytes'])} fetched, "
         f"{_bytes(cas['uploaded_bytes'])} uploaded"),
        ("through FUSE", f"{_bytes(fuse['read_bytes'])} read, "
         f"{_bytes(fuse['written_bytes'])} written"),
        ("uploads", f"{uploads['in_flight']} in flight, {uploads['committed']} committed "
         f"({uploads['deduplicated']} already there), {uploads['failed']} failed, "
         f"{uploads['recovered']} recovered, {uploads['resumed']} resumed"),
        ("assets", _assets_line(status.get("assets"))),
        ("errors", errors or "none"),
    ]  # fmt: skip
    return "\n".join(f"{key:<13} {value}" for key, value in lines)
