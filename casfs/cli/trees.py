"""``casfs put -r`` and ``casfs get -r``: trees between a local directory and the CAS.

``add_tree_options`` gives the CLI's put and get parsers their ``-r``; ``runner`` picks
the tree command when it was given. ``put -r`` prints one digest per argument: a
directory's is its root Directory's (the digest ``cp -r DIR MNT/main/uploads/`` shows as
``user.casfs.digest``), a file's is the blob's. ``get -r DIGEST DIR`` writes the tree as
DIR, which must not exist (or be an empty directory). See ``trees/local.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from casfs.cas.client import CasClient
from casfs.config import ConfigError, RemoteConfig
from casfs.digest import Digest, DigestFunction
from casfs.trees.local import materialize, put_tree
from casfs.trees.source import TreeSource

Runner = Callable[[argparse.Namespace, RemoteConfig], Coroutine[Any, Any, int]]


def add_tree_options(put: argparse.ArgumentParser, get: argparse.ArgumentParser) -> None:
    """``-r`` for put (directories as trees) and get (a tree into a directory)."""
    put.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="upload directories as REAPI trees; prints each root Directory's digest",
    )
    get.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="DIGEST is a tree's root Directory: write the tree as OUTPUT (a new directory)",
    )


def runner(args: argparse.Namespace) -> Runner | None:
    """The tree command ``args`` asks for, or None (not ``-r``: the blob commands)."""
    if not getattr(args, "recursive", False):
        return None
    if args.command == "put":
        return put_trees
    if args.command == "get":
        if args.output is None:
            raise ConfigError("get -r needs OUTPUT, the directory to write")
        return get_tree
    return None


async def put_trees(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Upload each argument (a directory as a tree, a file as a blob); print its digest.
    An argument that cannot be read is reported and skipped (exit 1 at the end)."""
    function = DigestFunction.from_name(args.digest_function)
    failed = False
    async with CasClient(config) as client:
        for name in args.files:
            path = Path(name)
            try:
                if path.is_dir():
                    digest = await put_tree(client, path, function)
                else:
                    digest = await client.upload_file(path, function)
            except OSError as error:
                print(f"casfs: put {name}: {error}", file=sys.stderr)
                failed = True
                continue
            print(digest, flush=True)
    return 1 if failed else 0


async def get_tree(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Materialize the tree ``args.digest`` as ``args.output``."""
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(config) as client:
        await materialize(TreeSource(client), digest, args.output)
    return 0
