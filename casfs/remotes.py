"""The config file of named remotes: ``[remotes.NAME]`` tables that ``casfs mount NAME``,
``--remote NAME``, ``casfs@NAME.service`` and fstab lines (``casfs#NAME``) use.

Looked up as ``--config FILE``, else ``$XDG_CONFIG_HOME/casfs/config.toml``, else
``/etc/casfs/config.toml``. A table's keys are ``casfs mount``'s long options; the command
line fills what its own flags leave unset from them. Every error is a ``ConfigError``
naming the file, the table and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casfs.config import BLOCK_SIZE_RULE, MIB, ConfigError, Table, is_block_size, read_toml
from casfs.resource import validate_instance_name

SYSTEM_CONFIG = Path("/etc/casfs/config.toml")


def default_config_file() -> Path:
    """The user's config file: ``$XDG_CONFIG_HOME/casfs/config.toml`` (``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "casfs" / "config.toml"


def config_file(explicit: Path | None) -> Path | None:
    """The named-remotes file: ``explicit`` (which must exist), else the first that exists
    of ``default_config_file()`` and ``/etc/casfs/config.toml``; None if neither does."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such config file")
        return explicit
    for candidate in (default_config_file(), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


OptionValue = str | int | bool | Path | list[str]


@dataclass(frozen=True, slots=True)
class Remote:
    """One ``[remotes.NAME]`` table of the config file.

    ``options`` holds its settings under the names of ``casfs mount``'s options (argparse
    destinations: ``remote``, ``instance``, ``cache_size``, ...), for the command line to
    fill in what its own flags leave unset. ``mountpoint`` is where ``casfs mount NAME``
    mounts it.
    """

    name: str
    source: Path
    options: dict[str, OptionValue]
    mountpoint: Path | None = None


# key in the file -> how to read it, and the option of casfs mount it sets
_REMOTE_KEYS: dict[str, tuple[str, str]] = {
    "endpoint": ("endpoint", "remote"),
    "store": ("path", "store"),
    "instances": ("instances", "instance"),
    "instance": ("instance", "instance"),
    "ca_file": ("path", "ca_file"),
    "client_cert": ("path", "client_cert"),
    "client_key": ("path", "client_key"),
    "token_file": ("path", "token_file"),
    "headers": ("string_table", "header"),
    "retries": ("retries", "retries"),
    "cache_size": ("size", "cache_size"),
    "block_size": ("block_size", "block_size"),
    "readahead": ("readahead", "readahead"),
    "cache_dir": ("path", "cache_dir"),
    "disk_cache": ("path", "disk_cache"),
    "disk_cache_size": ("size", "disk_cache_size"),
    "no_disk_cache": ("boolean", "no_disk_cache"),
    "read_only": ("boolean", "read_only"),
    "allow_other": ("boolean", "allow_other"),
    "options": ("strings", "options"),
    "log_file": ("path", "log_file"),
    "metrics": ("metrics", "metrics"),
    "tree_max_entries": ("tree_limit", "tree_max_entries"),
    "tree_max_depth": ("tree_limit", "tree_max_depth"),
    "tree_cache_size": ("tree_cache_size", "tree_cache_size"),
}


def _checked_string(
    table: Table, key: str, check: Callable[[str], object], errors: type[Exception]
) -> str | None:
    """A string that ``check`` accepts; what it raises (``errors``) names file and key."""
    value = table.string(key)
    if value is not None:
        try:
            check(value)
        except errors as error:
            raise ConfigError(f"{table.where}: {key!r}: {error}") from None
    return value


def _remote_value(table: Table, key: str, kind: str) -> OptionValue | None:
    if kind == "endpoint":
        from casfs.cas.channel import EndpointError, parse_endpoint

        return _checked_string(table, key, parse_endpoint, EndpointError)
    if kind == "metrics":
        from casfs.prometheus import parse_address

        return _checked_string(table, key, parse_address, ConfigError)
    if kind == "retries":
        return table.integer(key, minimum=1)
    if kind == "readahead":
        return table.integer(key, minimum=4)
    if kind == "tree_limit":  # as MountConfig checks --tree-max-entries, --tree-max-depth
        return table.integer(key, minimum=1)
    if kind == "tree_cache_size":
        size = table.size(key)
        if size is not None and size < MIB:
            raise table.error(key, "at least 1M")
        return size
    if kind == "block_size":
        size = table.size(key)
        if size is not None and not is_block_size(size):
            raise table.error(key, BLOCK_SIZE_RULE)
        return size
    if kind in ("instance", "instances"):
        names = table.strings(key) if kind == "instances" else table.string(key)
        if names is None:
            return None
        names = [names] if isinstance(names, str) else names
        for name in names:
            try:
                validate_instance_name(name)
            except ValueError as error:
                raise ConfigError(f"{table.where}: {key!r}: {error}") from None
        return names
    if kind == "string_table":
        headers = table.string_table(key)
        return None if headers is None else [f"{k}={v}" for k, v in headers.items()]
    readers: dict[str, Callable[[str], OptionValue | None]] = {
        "path": table.path,
        "size": table.size,
        "boolean": table.boolean,
        "strings": table.strings,
    }
    return readers[kind](key)


def load_remotes(path: Path) -> dict[str, Remote]:
    """Read the named remotes of a TOML file like::

    [remotes.work]
    endpoint = "grpcs://cas.corp:443"
    instances = ["main", "ci/linux"]
    token_file = "~/.config/casfs/token"
    cache_size = "2G"
    mountpoint = "/mnt/cas"
    """
    base = path.absolute().parent  # relative paths are relative to the file
    top = Table(str(path), read_toml(path), {"remotes"}, base)
    tables = top.data.get("remotes", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'remotes' must be a table of [remotes.NAME] tables")
    remotes: dict[str, Remote] = {}
    for name, data in tables.items():
        where = f"{path}: [remotes.{name!r}]"
        if not name or ":" in name or "/" in name:
            raise ConfigError(f"{where}: a remote's name is not empty and has no ':' or '/'")
        table = Table(where, data, {*_REMOTE_KEYS, "mountpoint"}, base)
        if "instance" in table.data and "instances" in table.data:
            raise ConfigError(f"{where}: set 'instance' or 'instances', not both")
        if "endpoint" in table.data and "store" in table.data:
            raise ConfigError(f"{where}: 'endpoint' (a server) or 'store' (embedded), not both")
        options: dict[str, OptionValue] = {}
        for key, (kind, option) in _REMOTE_KEYS.items():
            value = _remote_value(table, key, kind)
            if value is not None:
                options[option] = value
        remotes[name] = Remote(name, path, options, table.path("mountpoint"))
    return remotes


def find_remote(name: str, explicit: Path | None) -> Remote:
    """The remote called ``name`` in the config file; a ``ConfigError`` if there is none."""
    path = config_file(explicit)
    if path is None:
        raise ConfigError(
            f"no remote {name!r}: no config file ({default_config_file()} or {SYSTEM_CONFIG})"
        )
    remotes = load_remotes(path)
    if name not in remotes:
        raise ConfigError(f"{path}: no [remotes.{name!r}] (known: {sorted(remotes)})")
    return remotes[name]
