"""The ``casfs`` command: serve the embedded CAS, and put/get/stat blobs on any CAS.

Exit codes: 0 success; 1 a CAS operation failed (missing blob, server error); 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import trio

from casfs import __version__, notify
from casfs.cas.channel import EndpointError
from casfs.cas.client import CasClient
from casfs.cas.errors import CasError
from casfs.cas.retry import RetryPolicy
from casfs.config import (
    DEFAULT_INSTANCE,
    DEFAULT_LISTEN,
    ConfigError,
    MountConfig,
    RemoteConfig,
    ServeConfig,
    StoreConfig,
    default_cache_dir,
    default_store_dir,
    load_serve_config,
    parse_size,
)
from casfs.digest import Digest, DigestError, DigestFunction
from casfs.fs.errors import MountError
from casfs.remotes import (
    SYSTEM_CONFIG,
    Remote,
    config_file,
    default_config_file,
    find_remote,
    load_remotes,
)
from casfs.resource import ResourceNameError, validate_instance_name

log = logging.getLogger("casfs")
DEFAULT_REMOTE = f"grpc://{DEFAULT_LISTEN}"

EXAMPLES = """\
examples:
  casfs mount ~/cas                             # the embedded on-disk CAS, no server needed
  casfs mount --remote grpc://cas.corp:8980 --instance main ~/cas
  casfs mount work ~/cas                        # [remotes.work] of ~/.config/casfs/config.toml
  casfs mount work                              # ... at the mountpoint it names
  casfs serve                                   # embedded CAS on 127.0.0.1:8980
  casfs serve --store /srv/cas --instance main --instance ci=/srv/ci-cas
  casfs put build.tar                           # prints <hash>/<size>
  casfs get <hash>/<size> out.bin
  casfs stat --remote grpcs://cas.example:443 --token-file ~/.cas-token <hash>/<size>
"""


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--remote",
        help=f"CAS endpoint, or the NAME of a remote in the config file ({DEFAULT_REMOTE})",
    )
    parser.add_argument(
        "--instance",
        help=f"instance name (the remote's first, else {DEFAULT_INSTANCE!r})",
    )
    _connection_options(parser)
    parser.add_argument(
        "--digest-function",
        default="sha256",
        choices=[f.name_lower for f in DigestFunction if f.hashable],
    )


def _connection_options(parser: argparse.ArgumentParser) -> None:
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


def _remote_config(args: argparse.Namespace, instance: str) -> RemoteConfig:
    headers = []
    for header in args.header:
        key, sep, value = header.partition("=")
        if not sep or not key:
            raise ConfigError(f"--header needs KEY=VALUE, got {header!r}")
        headers.append((key, value))
    retries = 8 if args.retries is None else args.retries
    if retries < 1:
        raise ConfigError("--retries must be at least 1")
    return RemoteConfig(
        endpoint=args.remote or DEFAULT_REMOTE,
        instance=instance,
        retry=RetryPolicy(attempts=retries),
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        token_file=args.token_file,
        headers=tuple(headers),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casfs",
        description="Mount and use a remote content-addressable store (REAPI CAS).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"casfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    # -v also after the command (casfs serve -v); SUPPRESS keeps the top-level count.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the embedded CAS server")
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
    serve.add_argument("--max-size", type=_size, help="bound the store, e.g. 100G")
    serve.add_argument(
        "--evict", action="store_true", help="evict least recently used blobs at --max-size"
    )
    serve.add_argument("--no-fsync", action="store_true", help="skip fsync (faster, unsafe)")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the TLS certificate's private key (PEM)")
    serve.add_argument(
        "--token-file", type=Path, help="require a bearer token from this file (one per line)"
    )

    mount = commands.add_parser(
        "mount",
        parents=[common],
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
        "--cache-dir", type=Path, help=f"upload spool (one per mountpoint in {default_cache_dir()})"
    )
    flag = argparse.BooleanOptionalAction
    mount.add_argument("--read-only", action=flag, help="mount read-only")
    mount.add_argument("--allow-other", action=flag, help="let other users in")
    mount.add_argument("--cache-size", type=_size, help="block cache (512M)")
    mount.add_argument("--block-size", type=_size, help="fetch unit (1M)")
    mount.add_argument("--readahead", type=int, metavar="KIB", help="kernel readahead (1024)")
    mount.add_argument(
        "-o", dest="options", action="append", default=[], help="FUSE mount options, a,b,c"
    )
    mount.add_argument("--daemon", action="store_true", help="detach once mounted")
    mount.add_argument("--log-file", type=Path, help="with --daemon: where to log")
    _connection_options(mount)

    put = commands.add_parser(
        "put", parents=[common], help="upload files; prints <hash>/<size> for each"
    )
    put.add_argument("files", nargs="+", type=Path)
    _remote_options(put)

    get = commands.add_parser("get", parents=[common], help="download a blob to a file or stdout")
    get.add_argument("digest")
    get.add_argument("output", nargs="?", type=Path)
    _remote_options(get)

    stat = commands.add_parser("stat", parents=[common], help="say whether the CAS has a blob")
    stat.add_argument("digest")
    _remote_options(stat)
    return parser


def _serve_config(args: argparse.Namespace) -> ServeConfig:
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


def serve(args: argparse.Namespace) -> int:
    """Run the embedded server until SIGTERM or SIGINT, then stop with a short grace."""
    from casfs.server.app import Security, build_server
    from casfs.server.auth import load_tokens
    from casfs.server.instances import Instances

    config = _serve_config(args)
    try:
        security = Security(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tokens=tuple(load_tokens(args.token_file)) if args.token_file else (),
        )
        server, port = build_server(Instances(config.instances), config.listen, security=security)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    address = config.listen
    if not address.startswith("unix:"):
        address = f"{address.rpartition(':')[0]}:{port}"
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before "listening": a supervisor may
        signal.signal(signum, lambda *_: stop.set())  # signal as soon as it reads it
    print(f"casfs serve: listening on {address}", flush=True)
    notify.ready(f"listening on {address}")
    stop.wait()
    log.info("stopping")
    notify.stopping("stopping")
    server.stop(grace=5).wait()
    return 0


def _apply_remote(args: argparse.Namespace, remote: Remote) -> None:
    """Fill the options the command line left unset from a named remote: flags win; the
    file's headers and FUSE options come first (a header given on both is the flag's)."""
    for option, value in remote.options.items():
        given = getattr(args, option, None)
        if isinstance(value, list) and isinstance(given, list):  # header, options, instances
            if option == "header":
                keys = {header.partition("=")[0] for header in given}
                value = [header for header in value if header.partition("=")[0] not in keys]
            elif option == "instance" and given:
                continue  # --instance replaces the remote's instances
            setattr(args, option, [*value, *given])
        elif option == "instance" and isinstance(value, list):  # put/get/stat use one
            if given is None:
                args.instance = value[0]
        elif given is None:
            setattr(args, option, value)


def _named_remote(args: argparse.Namespace) -> Remote | None:
    """``--remote NAME`` (no ':'): a remote of the config file, applied to ``args``."""
    if args.remote is None or ":" in args.remote:
        return None
    remote = find_remote(args.remote, args.config)
    args.remote = None
    _apply_remote(args, remote)
    return remote


def _client_config(args: argparse.Namespace) -> RemoteConfig:
    """put/get/stat: the remote to talk to, from the flags and a named remote."""
    remote = _named_remote(args)
    if remote is not None and args.remote is None:
        raise ConfigError(
            f"{remote.source}: [remotes.{remote.name!r}] has no 'endpoint' to talk to "
            "(an embedded store is reached through casfs serve or casfs mount)"
        )
    return _remote_config(args, DEFAULT_INSTANCE if args.instance is None else args.instance)


async def _put(args: argparse.Namespace) -> int:
    function = DigestFunction.from_name(args.digest_function)
    async with CasClient(_client_config(args)) as client:
        for path in args.files:
            digest = await client.upload_file(path, function)
            print(digest, flush=True)
    return 0


async def _get(args: argparse.Namespace) -> int:
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(_client_config(args)) as client:
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        try:
            async for chunk in client.stream(digest):
                out.write(chunk)
        finally:
            if args.output:
                out.close()
    return 0


async def _stat(args: argparse.Namespace) -> int:
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(_client_config(args)) as client:
        if await client.contains(digest):
            print(f"{digest} present")
            return 0
        print(f"{digest} missing")
        return 1


def _mount_target(args: argparse.Namespace) -> Path:
    """Apply the named remote of ``casfs mount [NAME] MOUNTPOINT``; return the mountpoint."""
    if args.mountpoint is not None:  # NAME MOUNTPOINT
        _apply_remote(args, find_remote(args.target, args.config))
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
            _apply_remote(args, remote)
            mountpoint = remote.mountpoint
    _named_remote(args)
    return mountpoint


def _mount_config(args: argparse.Namespace) -> MountConfig:
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
        )
        if value is not None
    }
    return MountConfig(
        mountpoint=mountpoint.expanduser().resolve(),
        remote=_remote_config(args, "") if args.remote else None,
        instances=tuple(dict.fromkeys(args.instance or [DEFAULT_INSTANCE])),
        store=args.store or default_store_dir(),
        cache_dir=args.cache_dir,
        read_only=bool(args.read_only) or "ro" in options,
        allow_other=bool(args.allow_other),
        fuse_options=tuple(o for o in options if o != "ro"),
        **sizes,
    )


def mount(args: argparse.Namespace) -> int:
    """Mount in the foreground, or with --daemon detach once the mount is up."""
    from casfs.fs.daemon import daemonize
    from casfs.fs.mount import mount as run_mount

    config = _mount_config(args)
    if not args.daemon:
        run_mount(config)
        return 0
    log_file = args.log_file or config.store.parent / "mount.log"
    with daemonize(log_file) as ready:
        run_mount(config, ready)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "mount":
            return mount(args)
        runner = {"put": _put, "get": _get, "stat": _stat}[args.command]
        return trio.run(runner, args)
    except (ConfigError, EndpointError, DigestError, ResourceNameError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 2
    except (CasError, MountError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
