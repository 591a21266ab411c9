"""The ``casfs`` command: mount a CAS, serve the embedded one, put/get/stat blobs, and
show a running mount's status.

Exit codes (also in ``--help``): 0 success; 1 an operation failed (a missing blob, a server
or network error, an unreadable file, a mount that could not start, not a casfs mount);
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import trio

from casfs import assetcli, notify
from casfs.assetnames import AssetNameError
from casfs.cas.channel import EndpointError
from casfs.cas.client import CasClient
from casfs.cas.errors import CasError
from casfs.config import (
    DEFAULT_ABANDON_AFTER,
    DEFAULT_DISK_CACHE_SIZE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INSTANCE,
    DEFAULT_LISTEN,
    DEFAULT_MAX_PARTIAL_UPLOADS,
    DEFAULT_MAX_STREAMS,
    ConfigError,
    MountConfig,
    RemoteConfig,
    RetryPolicy,
    ServeConfig,
    StoreConfig,
    default_cache_dir,
    default_disk_cache_dir,
    default_store_dir,
    load_serve_config,
    parse_size,
)
from casfs.digest import Digest, DigestError, DigestFunction
from casfs.embedded import EmbeddedError, embedded_server
from casfs.fs.errors import MountError
from casfs.metrics import RpcCollector, parse_address, serve_metrics
from casfs.progress import progress
from casfs.remotes import (
    SYSTEM_CONFIG,
    Remote,
    config_file,
    default_config_file,
    find_remote,
    load_remotes,
)
from casfs.resource import ResourceNameError, validate_instance_name
from casfs.rpcstats import RpcStats
from casfs.version import VersionAction

log = logging.getLogger("casfs")

EXIT_STATUS = """\
exit status:
  0  success (stat: the blob is present)
  1  an operation failed: a missing blob, a server or network error, an unreadable file,
     a mount that could not start; stat: the blob is missing; status: not a casfs mount
  2  bad usage or configuration: an unknown option, a malformed digest, endpoint or file
"""

EXAMPLES = f"""\
examples:
  casfs mount ~/cas                             # the embedded on-disk CAS, no server needed
  casfs mount --remote grpc://cas.corp:8980 --instance main ~/cas
  casfs mount work ~/cas                        # [remotes.work] of ~/.config/casfs/config.toml
  casfs mount work                              # ... at the mountpoint it names
  casfs status ~/cas                            # what a running mount is doing
  casfs serve                                   # embedded CAS on 127.0.0.1:8980
  casfs serve --store /srv/cas --instance main --instance ci=/srv/ci-cas
  casfs put build.tar                           # prints <hash>/<size>
  casfs get <hash>/<size> out.bin
  casfs stat --remote grpcs://cas.example:443 --token-file ~/.cas-token <hash>/<size>

{EXIT_STATUS}"""

COMMAND_EXAMPLES = {
    "serve": """\
  casfs serve                                   # ~/.local/share/casfs/store on 127.0.0.1:8980
  casfs serve --store /srv/cas --listen 0.0.0.0:8980 --token-file /etc/casfs/tokens
  casfs serve --instance main --instance ci=/srv/ci-cas --max-size 100G --evict
  casfs serve --config /etc/casfs/serve.toml --metrics 127.0.0.1:9101
""",
    "mount": """\
  casfs mount ~/cas                             # the embedded store; Ctrl-C unmounts
  casfs mount --remote grpc://cas.corp:8980 --instance main --instance ci ~/cas
  casfs mount --remote grpcs://cas.example:443 --token-file ~/.cas-token --read-only ~/cas
  casfs mount --daemon --metrics 9100 ~/cas     # detach; Prometheus on 127.0.0.1:9100
""",
    "put": """\
  casfs put build.tar logs/*.txt                # one <hash>/<size> line per file
  tar c src | casfs put -                       # standard input
  casfs put --remote grpc://cas.corp:8980 --instance ci --digest-function blake3 out.bin
""",
    "get": """\
  casfs get <hash>/<size> out.bin               # written to out.bin only once verified
  casfs get <hash>/<size> | tar x               # to standard output
  casfs get --remote grpc://cas.corp:8980 --instance ci <hash>/<size> out.bin
""",
    "stat": """\
  casfs stat <hash>/<size>                      # exit 0 present, 1 missing
  casfs stat --remote grpcs://cas.example:443 --token-file ~/.cas-token <hash>/<size>
""",
    "asset": """\
  casfs asset push https://example.com/tool.tgz tool.tgz -q content_type=application/gzip
  casfs asset fetch https://example.com/tool.tgz    # {"digest": ..., "qualifiers": ...}
  casfs asset fetch https://x/y -q checksum.sri=sha256-<base64>   # any blob of that sha256
  casfs asset push --remote grpc://cas.corp:8980 urn:build:42 <hash>/<size> -q branch=main
""",
    "find": """\
  casfs find https://example.com/                 # names under a URI prefix, JSON lines
  casfs find --content-type application/json --min-size 1M
  casfs find --by-digest                          # each blob once, with all its names
  casfs find --store /srv/cas -q branch=main --table
""",
    "status": """\
  casfs status ~/cas                            # remote, uptime, cache, traffic, uploads, errors
  casfs status --json ~/cas | jq .cache.hit_rate
  getfattr -n user.casfs.status --only-values ~/cas   # the same JSON, without casfs
""",
}


def _epilog(command: str) -> str:
    return f"examples:\n{COMMAND_EXAMPLES[command]}\n{EXIT_STATUS}"


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
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="deadline of one call, plus the time a stream needs at 1 MiB/s (60)",
    )


def _remote_config(
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casfs",
        description="Mount and use a remote content-addressable store (REAPI CAS).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    # -v also after the command (casfs serve -v); SUPPRESS keeps the top-level count.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        if "description" in kwargs:  # the formatter keeps text as written: wrap it here
            kwargs["description"] = textwrap.fill(kwargs["description"], 88)
        return commands.add_parser(
            name,
            parents=[common],
            epilog=_epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,  # type: ignore[arg-type]
        )

    serve = command("serve", help="run the embedded CAS server")
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
    serve.add_argument(
        "--max-partial-uploads",
        type=int,
        default=DEFAULT_MAX_PARTIAL_UPLOADS,
        metavar="N",
        help=f"unfinished uploads held at once, per store ({DEFAULT_MAX_PARTIAL_UPLOADS})",
    )
    serve.add_argument(
        "--max-partial-size",
        type=_size,
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
    _metrics_option(serve)

    mount = command(
        "mount",
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
    mount.add_argument(
        "--check-remote",
        action=flag,
        help="before mounting, make sure the remote answers (default); --no-check-remote "
        "mounts a remote that comes up later",
    )
    mount.add_argument("--read-only", action=flag, help="mount read-only")
    mount.add_argument("--allow-other", action=flag, help="let other users in")
    mount.add_argument("--cache-size", type=_size, help="block cache (512M)")
    mount.add_argument("--block-size", type=_size, help="fetch unit (1M)")
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
        type=_size,
        metavar="SIZE",
        help=f"the disk cache's size; least recently used blocks go first "
        f"({DEFAULT_DISK_CACHE_SIZE >> 30}G)",
    )
    mount.add_argument(
        "--no-disk-cache", action="store_true", default=None, help="keep no blocks on disk"
    )
    mount.add_argument(
        "-o", dest="options", action="append", default=[], help="FUSE mount options, a,b,c"
    )
    mount.add_argument("--daemon", action="store_true", help="detach once mounted")
    mount.add_argument("--log-file", type=Path, help="with --daemon: where to log")
    _metrics_option(mount)
    _connection_options(mount)

    put = command(
        "put",
        help="upload files; prints <hash>/<size> for each",
        description="Upload files (or standard input, '-') unless the CAS has them, and print "
        "<hash>/<size> for each. A terminal shows a progress bar for large files.",
    )
    put.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for standard input")
    _remote_options(put)

    get = command(
        "get",
        help="download a blob to a file or stdout",
        description="Download a blob, verified against its digest. A file is written under a "
        "temporary name and renamed once complete, so a failed download leaves nothing.",
    )
    get.add_argument("digest", help="<hash>/<size>")
    get.add_argument("output", nargs="?", type=Path, help="file to write (default: stdout)")
    _remote_options(get)

    stat = command("stat", help="say whether the CAS has a blob")
    stat.add_argument("digest", help="<hash>/<size>")
    _remote_options(stat)

    status = command(
        "status",
        help="show what a running mount is doing",
        description="Show a running mount's remote, instances, uptime, block cache, traffic, "
        "uploads and errors (read from the mount's user.casfs.status attribute).",
    )
    status.add_argument("mountpoint", type=Path, help="the mountpoint itself (its root)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    assetcli.add_asset_commands(command, _remote_options, _size)
    return parser


def _metrics_address(text: str) -> str:
    try:
        parse_address(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to "
        "127.0.0.1; port 0 picks one, logged)",
    )


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
    from casfs.server.app import Security, build_server, listen_address
    from casfs.server.auth import load_tokens
    from casfs.server.instances import Instances
    from casfs.store.uploads import UploadLimits

    config = _serve_config(args)
    rpc_stats = RpcStats() if args.metrics else None
    with contextlib.ExitStack() as stack:
        if rpc_stats is not None:
            stack.enter_context(serve_metrics(args.metrics, RpcCollector(rpc_stats, "server")))
        try:
            security = Security(
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tokens=tuple(load_tokens(args.token_file)) if args.token_file else (),
            )
            server, port = build_server(
                Instances(
                    config.instances,
                    uploads=UploadLimits(
                        args.max_partial_size, args.max_partial_uploads, args.abandon_after
                    ),
                ),
                config.listen,
                security=security,
                max_streams=args.max_streams,
                stream_idle_timeout=args.stream_idle_timeout,
                rpc_stats=rpc_stats,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        address = listen_address(config.listen, port)
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


@contextlib.contextmanager
def _client_config(args: argparse.Namespace) -> Iterator[RemoteConfig]:
    """put/get/stat: the remote to talk to, from the flags and a named remote. With no
    endpoint, the embedded CAS (its store, as ``casfs mount`` with no remote uses it), on
    a private server for the length of the block."""
    remote = _named_remote(args)
    instance = DEFAULT_INSTANCE if args.instance is None else args.instance
    if args.remote is not None:
        yield _remote_config(args, instance)
        return
    store = args.store or default_store_dir()
    if remote is not None:
        log.debug("%s: [remotes.%r] has no endpoint: the embedded CAS", remote.source, remote.name)
    try:
        with embedded_server(store, [instance], quiet=not args.verbose) as endpoint:
            yield _remote_config(args, instance, endpoint)
    except EmbeddedError as error:
        raise CasError(str(error)) from None


async def _put(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Upload each file in turn; a file that cannot be read is reported and skipped (exit 1
    at the end), a CAS error stops the command."""
    function = DigestFunction.from_name(args.digest_function)
    failed = False
    async with CasClient(config) as client:
        for name in args.files:
            try:
                source = _spooled_stdin() if name == "-" else contextlib.nullcontext(Path(name))
                label = "stdin" if name == "-" else Path(name).name
                with source as path, progress(label, os.stat(path).st_size) as bar:
                    digest = await client.upload_file(path, function, bar.update)
            except OSError as error:
                print(f"casfs: put {name}: {error.strerror or error}", file=sys.stderr)
                failed = True
                continue
            print(digest, flush=True)
    return 1 if failed else 0


@contextlib.contextmanager
def _spooled_stdin() -> Iterator[Path]:
    """Standard input copied to a temporary file (in $TMPDIR), which is removed afterwards:
    the upload needs the digest first, and so the whole input."""
    with tempfile.TemporaryDirectory(prefix="casfs-put-") as directory:
        path = Path(directory) / "stdin"
        with open(path, "wb") as spool, progress("stdin", None) as bar:
            while chunk := sys.stdin.buffer.read(1 << 20):
                spool.write(chunk)
                bar.update("reading", spool.tell())
        yield path


async def _get(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Stream a blob to stdout, or to a temporary file beside OUTPUT renamed into place once
    the whole blob has arrived and matched its digest (a failure leaves no OUTPUT)."""
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(config) as client:
        if args.output is None:
            await _download(client, digest, sys.stdout.buffer, digest.hash[:12])
            return 0
        output: Path = args.output
        name = f".{output.name}."
        fd, temporary = tempfile.mkstemp(dir=output.parent, prefix=name, suffix=".part")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with open(fd, "wb") as out:
                await _download(client, digest, out, output.name)
            os.replace(temporary, output)
        except BaseException:
            os.unlink(temporary)
            raise
    return 0


async def _download(client: CasClient, digest: Digest, out: BinaryIO, label: str) -> None:
    with progress(label, digest.size) as bar:
        done = 0
        async for chunk in client.stream(digest):
            out.write(chunk)
            done += len(chunk)
            bar.update("downloading", done)
        out.flush()


def status(args: argparse.Namespace) -> int:
    """Print a running mount's status (see casfs/fs/status.py for how it is read)."""
    from casfs.fs.status import StatusError, format_status, read_status

    try:
        document = read_status(args.mountpoint)
    except StatusError as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_status(Path(os.path.abspath(args.mountpoint)), document))
    return 0


async def _stat(args: argparse.Namespace, config: RemoteConfig) -> int:
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(config) as client:
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
            ("disk_cache_size", args.disk_cache_size),
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
        metrics=args.metrics,
        check_remote=args.check_remote is not False,
        disk_cache=args.disk_cache,
        use_disk_cache=not args.no_disk_cache,
    )


def mount(args: argparse.Namespace) -> int:
    """Mount in the foreground, or with --daemon detach once the mount is up."""
    from casfs.fs.daemon import daemonize
    from casfs.fs.loader import load_mount

    run_mount = load_mount()

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
        if args.command == "status":
            return status(args)
        if args.command == "find":
            return assetcli.find(args)
        if args.command == "asset":
            assetcli.check_arguments(args)
            runner = {"push": assetcli.push, "fetch": assetcli.fetch}[args.asset_command]
        else:
            runner = {"put": _put, "get": _get, "stat": _stat}[args.command]
        with _client_config(args) as config:
            return trio.run(runner, args, config)
    except (ConfigError, EndpointError, DigestError, ResourceNameError, AssetNameError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 2
    except (CasError, MountError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
