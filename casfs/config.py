"""Settings, as frozen dataclasses: what to connect to and how patiently."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from casfs.cas.retry import RetryPolicy

DEFAULT_LISTEN = "127.0.0.1:8980"
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


def default_store_dir() -> Path:
    """The embedded CAS's default store; ``casfs serve`` and ``casfs mount`` share it."""
    return default_data_dir() / "store"


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
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    for key in data:
        if key not in _SERVE_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {sorted(_SERVE_KEYS)})")
    listen = data.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: 'listen' must be a string like \"127.0.0.1:8980\"")
    instances: dict[str, StoreConfig] = {}
    tables = data.get("instances", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'instances' must be a table of [instances.NAME] tables")
    for name, table in tables.items():
        where = f"{path}: [instances.{name!r}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        for key in table:
            if key not in _STORE_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(_STORE_KEYS)})")
        store = table.get("store")
        if not isinstance(store, str) or not store:
            raise ConfigError(f"{where}: 'store' must name a directory")
        max_size = table.get("max_size")
        if max_size is not None and not isinstance(max_size, str | int):
            raise ConfigError(f"{where}: 'max_size' must be a size like \"10G\"")
        try:
            size = parse_size(str(max_size)) if max_size is not None else None
        except ConfigError as error:
            raise ConfigError(f"{where}: 'max_size': {error}") from None
        flags = {}
        for key in ("evict", "fsync"):
            if key in table and not isinstance(table[key], bool):
                raise ConfigError(f"{where}: {key!r} must be true or false")
            flags[key] = table.get(key, key == "fsync")
        instances[name] = StoreConfig(
            Path(store).expanduser(), size, evict=flags["evict"], fsync=flags["fsync"]
        )
    return ServeConfig(listen=listen, instances=instances)


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

    def __post_init__(self) -> None:
        if self.block_size < 4096 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"--block-size must be a power of two >= 4K, not {self.block_size}")
        if self.cache_size < 16 * self.block_size:
            raise ConfigError("--cache-size must hold at least 16 blocks")
        if not self.instances:
            raise ConfigError("mount at least one instance")
