"""``casfs --version``: the casfs version and those of the parts it runs with.

The FUSE parts are looked up only when the version is asked for, without importing pyfuse3,
so a command that needs no FUSE never loads it, and ``--version`` works without it.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import platform
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from casfs import __version__

LIBFUSE = "libfuse3.so.3"  # the soname pyfuse3 links against


def _distribution(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def libfuse_version() -> str:
    """The version of the libfuse 3 the dynamic linker finds (the one pyfuse3 loads), or
    "not found"."""
    try:
        library = ctypes.CDLL(LIBFUSE)
    except OSError:
        return "not found"
    pkgversion = library.fuse_pkgversion  # in every libfuse 3: "3.14.0"
    pkgversion.restype = ctypes.c_char_p
    text: bytes = pkgversion()
    return text.decode("ascii", "replace")


def version_text() -> str:
    """Two lines: casfs's version, then grpcio's, protobuf's, pyfuse3's, libfuse's and
    Python's. Never raises: a missing part is named as such."""
    parts = [f"{name} {_distribution(name)}" for name in ("grpcio", "protobuf", "pyfuse3")]
    parts += [f"libfuse {libfuse_version()}", f"Python {platform.python_version()}"]
    return f"casfs {__version__}\n{', '.join(parts)}"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit 0 (computed only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the versions of casfs and of what it runs with")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        print(version_text(), file=sys.stdout, flush=True)
        parser.exit()
