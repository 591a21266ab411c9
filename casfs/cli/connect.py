"""Which remote a command talks to: a named remote of the config file applied under the
flags, an endpoint, or the embedded CAS on a private server; and ``on_remote``, which runs
a trio command against it."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

import trio

from casfs.cas.errors import CasError
from casfs.cli.options import remote_config
from casfs.config import DEFAULT_INSTANCE, RemoteConfig, default_store_dir
from casfs.embedded import EmbeddedError, embedded_server
from casfs.remotes import Remote, find_remote

log = logging.getLogger("casfs")

# A command run in trio against one remote: its exit status.
RemoteRunner = Callable[[argparse.Namespace, RemoteConfig], Awaitable[int]]


def apply_remote(args: argparse.Namespace, remote: Remote) -> None:
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


def named_remote(args: argparse.Namespace) -> Remote | None:
    """``--remote NAME`` (no ':'): a remote of the config file, applied to ``args``."""
    if args.remote is None or ":" in args.remote:
        return None
    remote = find_remote(args.remote, args.config)
    args.remote = None
    apply_remote(args, remote)
    return remote


@contextlib.contextmanager
def client_config(args: argparse.Namespace) -> Iterator[RemoteConfig]:
    """put/get/stat/asset: the remote to talk to, from the flags and a named remote. With
    no endpoint, the embedded CAS (its store, as ``casfs mount`` with no remote uses it),
    on a private server for the length of the block; its failure to start is a
    ``CasError``."""
    remote = named_remote(args)
    instance = DEFAULT_INSTANCE if args.instance is None else args.instance
    if args.remote is not None:
        yield remote_config(args, instance)
        return
    store = args.store or default_store_dir()
    if remote is not None:
        log.debug("%s: [remotes.%r] has no endpoint: the embedded CAS", remote.source, remote.name)
    try:
        with embedded_server(store, [instance], quiet=not args.verbose) as endpoint:
            yield remote_config(args, instance, endpoint)
    except EmbeddedError as error:
        raise CasError(str(error)) from None


def on_remote(
    runner: RemoteRunner, check: Callable[[argparse.Namespace], None] | None = None
) -> Callable[[argparse.Namespace], int]:
    """A command that runs ``runner`` in trio against the remote of its flags; ``check``
    refuses bad arguments first, before any server is started or called."""

    def run(args: argparse.Namespace) -> int:
        if check is not None:
            check(args)
        with client_config(args) as config:
            return trio.run(runner, args, config)

    return run
