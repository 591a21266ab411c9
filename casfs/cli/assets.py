"""``casfs asset push|fetch`` (the Remote Asset API, against any server) and ``casfs find``
(the catalog of a casfs store, read from its asset index).

push and fetch reach ``--remote`` or, with none, the embedded store, as put/get/stat do.
find reads a store's index file directly (read-only; a running server keeps writing
beside it), streaming: one JSON object a line, or a table on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from casfs.assetnames import (
    CHECKSUM_SRI,
    CONTENT_TYPE,
    AssetNameError,
    check_qualifiers,
    check_uris,
    parse_qualifier_arg,
    sri_hashes,
    sri_of,
)
from casfs.cas.assets import AssetClient
from casfs.cas.client import CasClient
from casfs.cli.connect import on_remote
from casfs.cli.options import remote_options, size
from casfs.config import RemoteConfig, default_store_dir
from casfs.digest import Digest, DigestError, DigestFunction
from casfs.store.assets import AssetIndex, AssetKind, Search

if TYPE_CHECKING:
    from casfs.cli.parser import Commands

ASSET_EXAMPLES = """\
  casfs asset push https://example.com/tool.tgz tool.tgz -q content_type=application/gzip
  casfs asset fetch https://example.com/tool.tgz    # {"digest": ..., "qualifiers": ...}
  casfs asset fetch https://x/y -q checksum.sri=sha256-<base64>   # any blob of that sha256
  casfs asset push --remote grpc://cas.corp:8980 urn:build:42 <hash>/<size> -q branch=main
"""
FIND_EXAMPLES = """\
  casfs find https://example.com/                 # names under a URI prefix, JSON lines
  casfs find --content-type application/json --min-size 1M
  casfs find --by-digest                          # each blob once, with all its names
  casfs find --store /srv/cas -q branch=main --table
"""

SRI_FUNCTIONS = (DigestFunction.SHA256, DigestFunction.SHA384, DigestFunction.SHA512)


def register(commands: Commands) -> None:
    """``asset push``, ``asset fetch`` and ``find``."""
    asset = commands.add(
        "asset",
        examples=ASSET_EXAMPLES,
        help="name blobs by URI and qualifiers (the Remote Asset API)",
        description="Push names for blobs (a URI and qualifiers such as content_type or "
        "checksum.sri) and fetch blobs by name, against any Remote Asset server "
        "(--remote) or the embedded store.",
    )
    actions = asset.add_subparsers(dest="asset_command", required=True)

    push = actions.add_parser(
        "push",
        help="upload FILE (unless the CAS has it) or take DIGEST, and name it URI",
        description="Name a blob URI (with qualifiers); a FILE is uploaded first and gets a "
        "checksum.sri qualifier of its sha256 unless one is given. Prints <hash>/<size>.",
    )
    push.add_argument("uri", metavar="URI")
    push.add_argument("target", metavar="FILE|DIGEST", help="a file, or <hash>/<size> in the CAS")
    push.add_argument("--also", action="append", default=[], metavar="URI", help="another name")
    _qualifier_option(push)
    push.add_argument(
        "--expires-in", type=float, metavar="SECONDS", help="stop answering after this long"
    )
    push.add_argument(
        "--directory", action="store_true", help="DIGEST is the root Directory of a tree"
    )
    remote_options(push)
    push.set_defaults(run=on_remote(push_asset, check_arguments))

    fetch = actions.add_parser(
        "fetch",
        help="the blob named URI: prints its digest and qualifiers as JSON",
        description="Ask the server for the blob named URI with the qualifiers given (a "
        "subset of those pushed is enough on casfs's own server). Prints one JSON object "
        "(casfs get DIGEST downloads the blob). Exit 1 when nothing matches.",
    )
    fetch.add_argument("uri", metavar="URI")
    fetch.add_argument("--also", action="append", default=[], metavar="URI", help="another name")
    _qualifier_option(fetch)
    fetch.add_argument("--directory", action="store_true", help="fetch a tree's root Directory")
    remote_options(fetch)
    fetch.set_defaults(run=on_remote(fetch_asset, check_arguments))

    search = commands.add(
        "find",
        examples=FIND_EXAMPLES,
        run=find_assets,
        help="search the catalog of named blobs",
        description="List the assets of a store's catalog that match every filter given, one "
        "JSON object a line (a table on a terminal), streamed in URI order; --by-digest puts "
        "each blob once with all its names.",
    )
    search.add_argument("prefix", nargs="?", default=None, metavar="URI_PREFIX")
    _qualifier_option(search)
    search.add_argument("--has", action="append", default=[], metavar="NAME", help="has qualifier")
    search.add_argument("--content-type", help=f"the {CONTENT_TYPE} qualifier is this")
    search.add_argument("--min-size", type=size, metavar="SIZE", help="at least, e.g. 1K")
    search.add_argument("--max-size", type=size, metavar="SIZE", help="at most, e.g. 10M")
    search.add_argument("--digest", metavar="HASH[/SIZE]", help="names of this blob")
    search.add_argument("--kind", choices=[k.value for k in AssetKind])
    search.add_argument("--expired", action="store_true", help="include expired assets")
    search.add_argument("--by-digest", action="store_true", help="one line per blob, all its names")
    output = search.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    output.add_argument("--table", action="store_true", help="a table even into a pipe")
    search.add_argument("--store", type=Path, help=f"the store ({default_store_dir()})")


def _qualifier_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--qualifier",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a qualifier (repeatable), e.g. content_type=application/json",
    )


def _qualifiers(args: argparse.Namespace) -> dict[str, str]:
    return check_qualifiers(parse_qualifier_arg(q) for q in args.qualifier)


def _uris(args: argparse.Namespace) -> list[str]:
    return check_uris([args.uri, *args.also])


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse malformed URIs and qualifiers before any server is started or called.
    Raises ``AssetNameError`` (the CLI exits 2)."""
    if args.command == "asset":
        _uris(args)
    qualifiers = _qualifiers(args)
    if CHECKSUM_SRI in qualifiers:
        sri_hashes(qualifiers[CHECKSUM_SRI])


async def push_asset(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Upload FILE unless it is a digest, then push the names; print the digest."""
    uris, qualifiers = _uris(args), _qualifiers(args)
    function = DigestFunction.from_name(args.digest_function)
    expire_at = None if args.expires_in is None else time.time() + args.expires_in
    async with CasClient(config) as cas, AssetClient(config) as assets:
        if os.path.exists(args.target):
            if args.directory:
                raise AssetNameError("--directory takes the DIGEST of a Directory, not a file")
            digest = await cas.upload_file(Path(args.target), function)
        else:
            try:
                digest = Digest.parse(args.target, function)
            except DigestError as error:
                raise AssetNameError(
                    f"{args.target}: no such file, and not a <hash>/<size> digest ({error})"
                ) from None
        if digest.function in SRI_FUNCTIONS and CHECKSUM_SRI not in qualifiers:
            qualifiers[CHECKSUM_SRI] = sri_of(digest.function, digest.hash)
        if args.directory:
            await assets.push_directory(uris, digest, qualifiers, expire_at=expire_at)
        else:
            await assets.push_blob(uris, digest, qualifiers, expire_at=expire_at)
    print(digest, flush=True)
    return 0


async def fetch_asset(args: argparse.Namespace, config: RemoteConfig) -> int:
    """Print what the server answers for the names (NotFound if nothing matches)."""
    uris, qualifiers = _uris(args), _qualifiers(args)
    async with AssetClient(config) as assets:
        if args.directory:
            found = await assets.fetch_directory(uris, qualifiers)
        else:
            found = await assets.fetch_blob(uris, qualifiers)
    document = {
        "uri": found.uri,
        "digest": str(found.digest),
        "digest_function": found.digest.function.name_lower,
        "size": found.digest.size,
        "qualifiers": found.qualifiers,
        "expires_at": found.expires_at,
    }
    print(json.dumps(document, ensure_ascii=False), flush=True)
    return 0


def _search(args: argparse.Namespace) -> Search:
    qualifiers = _qualifiers(args)
    if args.content_type is not None:
        qualifiers[CONTENT_TYPE] = args.content_type
    hash_ = None
    if args.digest is not None:
        hash_, _, size = args.digest.partition("/")
        Digest.parse(f"{hash_}/{size or 0}", DigestFunction.from_hex_length(len(hash_)))
        if size:
            args.min_size = args.max_size = int(size)
    return Search(
        uri_prefix=args.prefix,
        qualifiers=qualifiers,
        qualifier_names=tuple(args.has),
        min_size=args.min_size,
        max_size=args.max_size,
        hash=hash_,
        kind=None if args.kind is None else AssetKind(args.kind),
        include_expired=args.expired,
        by_digest=args.by_digest,
    )


def _table_line(document: dict[str, object]) -> str:
    names = document.get("names")
    if isinstance(names, list):
        uris = ", ".join(str(n["uri"]) for n in names)
        return f"{str(document['digest'])[:16]:16}  {document['size']:>12}  {len(names):>3}  {uris}"
    qualifiers = document["qualifiers"]
    assert isinstance(qualifiers, dict)
    shown = " ".join(f"{k}={v}" for k, v in qualifiers.items() if k != CHECKSUM_SRI)
    return f"{str(document['digest'])[:16]:16}  {document['size']:>12}  {document['uri']}  {shown}"


def find_assets(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Stream the matching assets of the store's index; exit 1 if nothing matches."""
    out = out or sys.stdout
    search = _search(args)
    store: Path = args.store or default_store_dir()
    index = AssetIndex.open_read_only(store)
    if index is None:
        print(f"casfs: find: {store} has no asset catalog (nothing was pushed)", file=sys.stderr)
        return 1
    table = args.table or (not args.json and out.isatty())
    if table:
        header = "NAMES  URIS" if search.by_digest else "URI  QUALIFIERS"
        print(f"{'DIGEST':16}  {'SIZE':>12}  {header}", file=out)
    found = 0
    try:
        for line in index.search_json(search):
            found += 1
            out.write((_table_line(json.loads(line)) if table else line) + "\n")
        out.flush()
    except BrokenPipeError:  # `casfs find | head`: the reader has enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    finally:
        index.close()
    return 0 if found else 1
