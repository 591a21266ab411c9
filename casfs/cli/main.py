"""``casfs`` (``main``): parse the command line, run the command, and turn its failure
into the exit status: 2 for bad usage or configuration, 1 for an operation that failed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from casfs.assetnames import AssetNameError
from casfs.cas.channel import EndpointError
from casfs.cas.errors import CasError
from casfs.cli.parser import build_parser
from casfs.config import ConfigError
from casfs.digest import DigestError
from casfs.fs.errors import MountError
from casfs.resource import ResourceNameError


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``casfs`` command; returns its exit status. Errors other than the ones
    named here (a bug, KeyboardInterrupt) propagate with their traceback."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        status: int = args.run(args)
        return status
    except (ConfigError, EndpointError, DigestError, ResourceNameError, AssetNameError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 2
    except (CasError, MountError) as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"casfs: {error}", file=sys.stderr)
        return 1
