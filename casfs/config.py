"""Settings, as frozen dataclasses: what to connect to and how patiently."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8980"
# casfs serve: streams served at once, and how long one may move no message.
DEFAULT_MAX_STREAMS = 256
DEFAULT_IDLE_TIMEOUT = 60.0
# casfs serve: partial uploads held at once, and how long one may sit unwritten.
DEFAULT_MAX_PARTIAL_UPLOADS = 1000
DEFAULT_ABANDON_AFTER = 3600.0
DEFAULT_INSTANCE = "main"
MIB = 1 << 20


def default_data_dir() -> Path:
    """Where casfs keeps its embedded store and caches: ``$XDG_DATA_HOME/casfs``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "casfs"


def default_cache_dir() -> Path:
    """Where a mount spools uploads: ``$XDG_CACHE_HOME/casfs``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "casfs"


def mount_cache_dir(mountpoint: Path) -> Path:
    """The default cache directory of a mountpoint: the next mount there finds the
    uploads the last one could not finish."""
    name = str(mountpoint).strip("/").replace("/", "-") or "root"
    return default_cache_dir() / "mounts" / name


def default_disk_cache_dir() -> Path:
    """The disk cache of blocks read from remotes, shared by every mount of the user:
    ``$XDG_CACHE_HOME/casfs/blocks``."""
    return default_cache_dir() / "blocks"


DEFAULT_DISK_CACHE_SIZE = 1 << 30


def default_store_dir() -> Path:
    """The embedded CAS's default store; ``casfs serve`` and ``casfs mount`` share it."""
    return default_data_dir() / "store"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure."""

    attempts: int = 8
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts: ``attempts - 1`` values with full jitter."""
        ceiling = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield random.uniform(0, ceiling)
            ceiling = min(self.max_backoff, ceiling * self.multiplier)


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """How to reach one REAPI CAS endpoint.

    ``endpoint`` is ``grpc://host:port`` (plaintext), ``grpcs://host:port`` (TLS),
    ``unix:/path`` (a local socket); ``http://`` and ``https://`` are accepted as the
    plaintext and TLS spellings that Bazel and buildbox use.
    """

    endpoint: str
    instance: str = DEFAULT_INSTANCE
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token_file: Path | None = None
    rpc_timeout: float = 60.0
    min_stream_rate: int = 1 * MIB
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    chunk_size: int = 1 * MIB
    max_concurrent_streams: int = 16
    compression: bool = False


class ConfigError(ValueError):
    """A configuration file or option is wrong; the message names the file and the key."""


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"10G"``, ``"1024"`` as bytes (binary units; a trailing ``iB``/``B`` is ok)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in _SIZE_UNITS else ""
    number = cleaned[: len(cleaned) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M, 10G)") from None
    if not 0 <= value < 2**63 / _SIZE_UNITS[unit]:
        raise ConfigError(f"not a size: {text!r}")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """One directory of the embedded CAS and how it is run."""

    path: Path
    max_size: int | None = None
    evict: bool = False
    fsync: bool = True


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """``casfs serve``: where to listen and which store serves each instance name."""

    listen: str = DEFAULT_LISTEN
    instances: dict[str, StoreConfig] = field(default_factory=dict)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a ``ConfigError`` naming it."""
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None


class Table:
    """One TOML table, read key by key: every error names ``where`` and the key.

    ``where`` is the file and the table (``/etc/casfs/config.toml: [remotes.'work']``).
    Unknown keys are refused up front. Relative paths are taken relative to ``base``.
    """

    def __init__(self, where: str, data: object, known: set[str], base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table")
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(known)})")
        self.where = where
        self.data: dict[str, object] = data
        self.base = base

    def error(self, key: str, should: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key!r} must be {should}")

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "a string")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    def integer(self, key: str, minimum: int = 0) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"a whole number >= {minimum}")
        return value

    def size(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(key, 'a size like "10G"')
        try:
            return parse_size(str(value))
        except ConfigError as error:
            raise ConfigError(f"{self.where}: {key!r}: {error}") from None

    def path(self, key: str) -> Path | None:
        value = self.string(key)
        if value is not None and not value:
            raise self.error(key, "a path")
        return self.base / Path(value).expanduser() if value else None

    def strings(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, 'a list of strings like ["a", "b"]')
        return value

    def string_table(self, key: str) -> dict[str, str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(key, 'a table of strings like { "x-tenant" = "abc" }')
        return value


_SERVE_KEYS = {"listen", "instances"}
_STORE_KEYS = {"store", "max_size", "evict", "fsync"}


def load_serve_config(path: Path) -> ServeConfig:
    """Read a TOML file like::

    listen = "127.0.0.1:8980"
    [instances.main]
    store = "/var/lib/casfs"
    max_size = "100G"
    evict = true
    [instances.""]          # the empty instance name
    store = "/var/lib/casfs"
    """
    # store paths are as they always were: relative to the working directory
    top = Table(str(path), read_toml(path), _SERVE_KEYS, Path())
    listen = top.string("listen") or DEFAULT_LISTEN
    tables = top.data.get("instances", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'instances' must be a table of [instances.NAME] tables")
    instances: dict[str, StoreConfig] = {}
    for name, data in tables.items():
        table = Table(f"{path}: [instances.{name!r}]", data, _STORE_KEYS, Path())
        store = table.path("store")
        if store is None:
            raise table.error("store", "set to a directory")
        instances[name] = StoreConfig(
            store,
            table.size("max_size"),
            evict=bool(table.boolean("evict")),
            fsync=table.boolean("fsync") is not False,
        )
    return ServeConfig(listen=listen, instances=instances)


BLOCK_SIZE_RULE = "a power of two of at least 4K"


def is_block_size(size: int) -> bool:
    """Whether ``size`` can be the mount's fetch unit (``BLOCK_SIZE_RULE``)."""
    return size >= 4096 and not size & (size - 1)


@dataclass(frozen=True, slots=True)
class MountConfig:
    """``casfs mount``: what to mount where, and how much memory the block cache may use.

    ``remote`` None means the embedded CAS: a private ``casfs serve`` on ``store``, reached
    over a unix socket.
    """

    mountpoint: Path
    remote: RemoteConfig | None
    instances: tuple[str, ...] = (DEFAULT_INSTANCE,)
    store: Path = field(default_factory=default_store_dir)
    cache_dir: Path | None = None  # None: mount_cache_dir(mountpoint)
    read_only: bool = False
    allow_other: bool = False
    fuse_options: tuple[str, ...] = ()
    cache_size: int = 512 * MIB
    block_size: int = 1 * MIB
    readahead_kb: int = 1024
    max_tasks: int = 64
    drain_timeout: float = 300.0
    metrics: str | None = None  # [HOST:]PORT of a Prometheus endpoint; None: none
    check_remote: bool = True  # refuse to mount a remote that does not answer
    disk_cache: Path | None = None  # None: default_disk_cache_dir()
    disk_cache_size: int = DEFAULT_DISK_CACHE_SIZE
    use_disk_cache: bool = True
    # A casfs store whose asset catalog assets/ lists (the embedded store's by default).
    asset_catalog: Path | None = None
    # trees/ and actions/ (casfs.trees.model.TreeLimits, casfs.trees.source)
    tree_max_entries: int = 100_000  # entries of one Directory
    tree_max_depth: int = 256  # directories below a tree's root on one path
    tree_cache_size: int = 64 * MIB  # checked Directories kept in memory

    def __post_init__(self) -> None:
        if not is_block_size(self.block_size):
            raise ConfigError(f"--block-size must be {BLOCK_SIZE_RULE}, not {self.block_size}")
        if self.cache_size < 16 * self.block_size:
            raise ConfigError("--cache-size must hold at least 16 blocks")
        if not self.instances:
            raise ConfigError("mount at least one instance")
        if self.use_disk_cache and self.disk_cache_size < 4 * self.block_size:
            raise ConfigError("--disk-cache-size must hold at least 4 blocks")
        if min(self.tree_max_entries, self.tree_max_depth) < 1:
            raise ConfigError("--tree-max-entries and --tree-max-depth must be at least 1")
        if self.tree_cache_size < MIB:
            raise ConfigError("--tree-cache-size must be at least 1M")
