"""``casfs status``: a running mount's status, read from its ``user.casfs.status``
attribute (``casfs.fs.status`` reads and formats it)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from casfs.cli.parser import Commands

EXAMPLES = """\
  casfs status ~/cas                            # remote, uptime, cache, traffic, uploads, errors
  casfs status --json ~/cas | jq .cache.hit_rate
  getfattr -n user.casfs.status --only-values ~/cas   # the same JSON, without casfs
"""


def register(commands: Commands) -> None:
    status = commands.add(
        "status",
        examples=EXAMPLES,
        run=run,
        help="show what a running mount is doing",
        description="Show a running mount's remote, instances, uptime, block cache, traffic, "
        "uploads and errors (read from the mount's user.casfs.status attribute).",
    )
    status.add_argument("mountpoint", type=Path, help="the mountpoint itself (its root)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def run(args: argparse.Namespace) -> int:
    """Print a running mount's status; exit 1 if it is not a casfs mount."""
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
