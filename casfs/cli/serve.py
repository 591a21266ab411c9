"""``casfs serve``: its options, and its settings from them and the config file; the
loop itself is ``casfs.server.run``'s."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from casfs.cli.options import metrics_option, size
from casfs.config import (
    DEFAULT_ABANDON_AFTER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INSTANCE,
    DEFAULT_LISTEN,
    DEFAULT_MAX_PARTIAL_UPLOADS,
    DEFAULT_MAX_STREAMS,
    ServeConfig,
    StoreConfig,
    default_store_dir,
    load_serve_config,
)

if TYPE_CHECKING:
    from casfs.cli.parser import Commands

EXAMPLES = """\
  casfs serve                                   # ~/.local/share/casfs/store on 127.0.0.1:8980
  casfs serve --store /srv/cas --listen 0.0.0.0:8980 --token-file /etc/casfs/tokens
  casfs serve --instance main --instance ci=/srv/ci-cas --max-size 100G --evict
  casfs serve --config /etc/casfs/serve.toml --metrics 127.0.0.1:9101
"""


def register(commands: Commands) -> None:
    serve = commands.add("serve", examples=EXAMPLES, run=run, help="run the embedded CAS server")
    serve.add_argument("--config", type=Path, help="TOML file with listen and [instances.NAME]")
    serve.add_argument("--store", type=Path, help=f"store directory ({default_store_dir()})")
    serve.add_argument("--listen", help=f"host:port to listen on ({DEFAULT_LISTEN}; port 0 picks)")
    serve.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="serve this instance name (from DIR, or from --store); repeatable. "
        "Default: 'main' and the empty name, both from --store",
    )
    serve.add_argument("--max-size", type=size, help="bound the store, e.g. 100G")
    serve.add_argument(
        "--evict", action="store_true", help="evict least recently used blobs at --max-size"
    )
    serve.add_argument("--no-fsync", action="store_true", help="skip fsync (faster, unsafe)")
    serve.add_argument(
        "--max-partial-uploads",
        type=int,
        default=DEFAULT_MAX_PARTIAL_UPLOADS,
        metavar="N",
        help=f"unfinished uploads held at once, per store ({DEFAULT_MAX_PARTIAL_UPLOADS})",
    )
    serve.add_argument(
        "--max-partial-size",
        type=size,
        metavar="SIZE",
        help="bytes unfinished uploads may hold, per store (--max-size; without it, the disk)",
    )
    serve.add_argument(
        "--abandon-after",
        type=float,
        default=DEFAULT_ABANDON_AFTER,
        metavar="SECONDS",
        help=f"reclaim an unfinished upload nobody wrote for this long ({DEFAULT_ABANDON_AFTER:g})",
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        metavar="N",
        help=f"streams (Read, Write, GetTree) served at once; more are refused "
        f"({DEFAULT_MAX_STREAMS})",
    )
    serve.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"end a stream that moves no message for this long; an upload stays resumable "
        f"({DEFAULT_IDLE_TIMEOUT:g})",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the TLS certificate's private key (PEM)")
    serve.add_argument(
        "--token-file",
        type=Path,
        help="require a bearer token from this file (one per line; 'TOKEN read-only' may "
        "only read)",
    )
    metrics_option(serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The instances and address: the config file's, with the flags' instances added."""
    base = load_serve_config(args.config) if args.config else ServeConfig()
    store = args.store or default_store_dir()
    options = {"max_size": args.max_size, "evict": args.evict, "fsync": not args.no_fsync}
    instances = dict(base.instances)
    for spec in args.instance:
        name, sep, directory = spec.partition("=")
        instances[name] = StoreConfig(Path(directory) if sep else store, **options)
    if not instances:
        default = StoreConfig(store, **options)
        instances = {DEFAULT_INSTANCE: default, "": default}
    return ServeConfig(listen=args.listen or base.listen, instances=instances)


def run(args: argparse.Namespace) -> int:
    """Run the embedded server until SIGTERM or SIGINT (``serve_until_signalled``)."""
    from casfs.server.run import ServeOptions, serve_until_signalled

    config = serve_config(args)
    serve_until_signalled(
        config,
        ServeOptions(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token_file=args.token_file,
            max_partial_size=args.max_partial_size,
            max_partial_uploads=args.max_partial_uploads,
            abandon_after=args.abandon_after,
            max_streams=args.max_streams,
            stream_idle_timeout=args.stream_idle_timeout,
            metrics=args.metrics,
        ),
    )
    return 0
