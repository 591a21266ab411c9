"""Options shared by several commands: sizes, the remote and its connection, metrics; and
the ``RemoteConfig`` they make. Each raises argparse's usage error (exit 2) for a bad
value; ``remote_config`` raises ``ConfigError`` (also exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from casfs.config import (
    DEFAULT_INSTANCE,
    ConfigError,
    RemoteConfig,
    RetryPolicy,
    default_store_dir,
    parse_size,
)
from casfs.digest import DigestFunction
from casfs.prometheus import parse_address
from casfs.remotes import SYSTEM_CONFIG, default_config_file


def size(text: str) -> int:
    """A size such as ``512M`` (argparse ``type``)."""
    try:
        return parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def remote_options(parser: argparse.ArgumentParser) -> None:
    """put/get/stat/asset: ``--remote`` or the embedded store, one instance, a digest
    function, and the connection options."""
    parser.add_argument(
        "--remote",
        help="CAS endpoint, or the NAME of a remote in the config file (default: the embedded "
        "CAS, the store casfs mount uses with no --remote)",
    )
    parser.add_argument(
        "--store", type=Path, help=f"the embedded store, with no --remote ({default_store_dir()})"
    )
    parser.add_argument(
        "--instance",
        help=f"instance name (the remote's first, else {DEFAULT_INSTANCE!r})",
    )
    connection_options(parser)
    parser.add_argument(
        "--digest-function",
        default="sha256",
        choices=[f.name_lower for f in DigestFunction if f.hashable],
    )


def connection_options(parser: argparse.ArgumentParser) -> None:
    """How to reach a remote: the config file of named remotes, TLS, tokens, headers,
    retries and deadlines."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"the file of named remotes (default {default_config_file()}, else {SYSTEM_CONFIG})",
    )
    parser.add_argument("--ca-file", type=Path, help="CA certificates for grpcs://")
    parser.add_argument("--client-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--client-key", type=Path, help="client key for mutual TLS")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token")
    parser.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE", help="extra call header"
    )
    parser.add_argument("--retries", type=int, help="attempts for a call on transient errors (8)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="deadline of one call, plus the time a stream needs at 1 MiB/s (60)",
    )


def remote_config(
    args: argparse.Namespace, instance: str, endpoint: str | None = None
) -> RemoteConfig:
    """The remote of the flags (``--remote``, else ``endpoint``) and its connection options."""
    headers = []
    for header in args.header:
        key, sep, value = header.partition("=")
        if not sep or not key:
            raise ConfigError(f"--header needs KEY=VALUE, got {header!r}")
        headers.append((key, value))
    retries = 8 if args.retries is None else args.retries
    if retries < 1:
        raise ConfigError("--retries must be at least 1")
    timeout = 60.0 if args.timeout is None else args.timeout
    if not 0 < timeout < 10**6:  # also refuses nan and inf
        raise ConfigError("--timeout must be a positive number of seconds")
    return RemoteConfig(
        endpoint=endpoint or args.remote,
        instance=instance,
        retry=RetryPolicy(attempts=retries),
        rpc_timeout=timeout,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        token_file=args.token_file,
        headers=tuple(headers),
    )


def _metrics_address(text: str) -> str:
    try:
        parse_address(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def metrics_option(parser: argparse.ArgumentParser) -> None:
    """``--metrics [HOST:]PORT`` (serve, mount)."""
    parser.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to "
        "127.0.0.1; port 0 picks one, logged)",
    )
