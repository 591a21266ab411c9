"""``casfs put``, ``get`` and ``stat``: blobs to and from a CAS (``--remote`` or the
embedded store, see ``casfs.cli.connect``), run in trio with one ``CasClient``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from casfs.cas.client import CasClient
from casfs.cli import trees
from casfs.cli.connect import on_remote
from casfs.cli.options import remote_options
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestFunction
from casfs.progress import progress

if TYPE_CHECKING:
    from casfs.cli.parser import Commands

PUT_EXAMPLES = """\
  casfs put build.tar logs/*.txt                # one <hash>/<size> line per file
  tar c src | casfs put -                       # standard input
  casfs put --remote grpc://cas.corp:8980 --instance ci --digest-function blake3 out.bin
"""
GET_EXAMPLES = """\
  casfs get <hash>/<size> out.bin               # written to out.bin only once verified
  casfs get <hash>/<size> | tar x               # to standard output
  casfs get --remote grpc://cas.corp:8980 --instance ci <hash>/<size> out.bin
"""
STAT_EXAMPLES = """\
  casfs stat <hash>/<size>                      # exit 0 present, 1 missing
  casfs stat --remote grpcs://cas.example:443 --token-file ~/.cas-token <hash>/<size>
"""


def register(commands: Commands) -> None:
    put = commands.add(
        "put",
        examples=PUT_EXAMPLES,
        run=on_remote(put_command),
        help="upload files; prints <hash>/<size> for each",
        description="Upload files (or standard input, '-') unless the CAS has them, and print "
        "<hash>/<size> for each. A terminal shows a progress bar for large files.",
    )
    put.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for standard input")
    remote_options(put)

    get = commands.add(
        "get",
        examples=GET_EXAMPLES,
        run=on_remote(get_command),
        help="download a blob to a file or stdout",
        description="Download a blob, verified against its digest. A file is written under a "
        "temporary name and renamed once complete, so a failed download leaves nothing.",
    )
    get.add_argument("digest", help="<hash>/<size>")
    get.add_argument("output", nargs="?", type=Path, help="file to write (default: stdout)")
    remote_options(get)
    trees.add_tree_options(put, get)

    stat = commands.add(
        "stat",
        examples=STAT_EXAMPLES,
        run=on_remote(stat_blob),
        help="say whether the CAS has a blob",
    )
    stat.add_argument("digest", help="<hash>/<size>")
    remote_options(stat)


async def put_command(args: argparse.Namespace, config: RemoteConfig) -> int:
    """``put``, or ``put -r`` (``cli/trees.py``)."""
    tree = trees.runner(args)
    return await (tree or put_files)(args, config)


async def get_command(args: argparse.Namespace, config: RemoteConfig) -> int:
    """``get``, or ``get -r`` (``cli/trees.py``)."""
    tree = trees.runner(args)
    return await (tree or get_blob)(args, config)


async def put_files(args: argparse.Namespace, config: RemoteConfig) -> int:
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


async def get_blob(args: argparse.Namespace, config: RemoteConfig) -> int:
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


async def stat_blob(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Exit 0 if the CAS has the blob, 1 if not."""
    digest = Digest.parse(args.digest, DigestFunction.from_name(args.digest_function))
    async with CasClient(config) as client:
        if await client.contains(digest):
            print(f"{digest} present")
            return 0
        print(f"{digest} missing")
        return 1
