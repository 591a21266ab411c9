"""The ``casfs`` argument parser: the top level, and the table of command groups.

A command group is a module with ``register(commands: Commands)``, which adds its
subcommands with ``commands.add`` and gives each the function that runs it
(``run(args) -> exit status``). A new command is a new entry in ``GROUPS``; the order of
``GROUPS`` is the order of ``casfs --help`` and of the man page (build_backend/ generates
it and the shell completions from ``build_parser``).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable

from casfs.cli import assets, blobs, mount, serve, status
from casfs.version import VersionAction

# What runs a parsed command: its exit status from its arguments.
Runner = Callable[[argparse.Namespace], int]

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


class Commands:
    """The subcommands of ``casfs``, as the command groups register them."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        # -v also after the command (casfs serve -v); SUPPRESS keeps the top-level count.
        self._common = argparse.ArgumentParser(add_help=False)
        self._common.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging"
        )
        self._subparsers = parser.add_subparsers(dest="command", required=True)

    def add(
        self, name: str, *, examples: str, run: Runner | None = None, **kwargs: str
    ) -> argparse.ArgumentParser:
        """A subcommand ``casfs NAME``: ``examples`` (lines of ``casfs ...  # why``) and
        the exit status go in its epilog; ``run`` runs it (None: its own subcommands set
        ``run``); ``help`` and ``description`` as argparse takes them."""
        if "description" in kwargs:  # the formatter keeps text as written: wrap it here
            kwargs["description"] = textwrap.fill(kwargs["description"], 88)
        parser = self._subparsers.add_parser(
            name,
            parents=[self._common],
            epilog=f"examples:\n{examples}\n{EXIT_STATUS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,  # type: ignore[arg-type]
        )
        if run is not None:
            parser.set_defaults(run=run)
        return parser


# The command groups, in the order --help lists them.
GROUPS: tuple[Callable[[Commands], None], ...] = (
    serve.register,
    mount.register,
    blobs.register,
    status.register,
    assets.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; building it imports no pyfuse3 and starts nothing."""
    parser = argparse.ArgumentParser(
        prog="casfs",
        description="Mount and use a remote content-addressable store (REAPI CAS).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    commands = Commands(parser)
    for register in GROUPS:
        register(commands)
    return parser
