"""Remote Asset URIs as paths below ``<instance>/assets/``, and back. No I/O.

A URI is cut at every ``/`` after its scheme; each piece is one file name:

    https://example.com/dist/tool-1.2.tar.gz   ->  https/example.com/dist/tool-1.2.tar.gz
    urn:casfs:report:42                        ->  urn:/casfs:report:42
    file:///srv/x                              ->  file/%/srv/x

- A URI with an authority (``scheme://``) has the directory ``<scheme>``, then the
  authority, then the rest; one without (``scheme:rest``) the directory ``<scheme>:``,
  then the rest. So the path names the URI exactly: a prefix of names is a prefix of
  the URI's text (``AssetPrefix``), and the URI is its prefix's text plus the last name.
- An empty piece (an empty authority, ``//`` in a path, a trailing ``/``) is the name
  ``%``. A piece that cannot be a file name, or would read back as another, is not
  shown at all: ``.``, ``..`` (plain or percent-encoded, anywhere in the URI, query
  included), a piece that is exactly ``%``, one longer than 255 bytes. NUL, ``/`` and
  control characters never reach here: ``assetnames.check_uri`` refuses such URIs.
- Every name turned back into a URI is checked again (``check_uri``), so no name can
  make a URI the API would refuse, and no URI makes a path outside ``assets/``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from casfs.assetnames import AssetNameError, check_uri

EMPTY = "%"  # the name of an empty piece
NAME_MAX = 255  # bytes in one file name (Linux)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True, slots=True)
class AssetPrefix:
    """A directory below ``assets/``: the text every URI below it starts with
    (``https://``, ``https://example.com/``, ``urn:``, ...)."""

    text: str

    def child_uri(self, name: str) -> str | None:
        """The URI a name in this directory stands for; None if it cannot be one."""
        piece = piece_of(name)
        if piece is None:
            return None
        uri = self.text + piece
        try:
            check_uri(uri)
        except AssetNameError:
            return None
        return uri

    def child(self, name: str) -> AssetPrefix | None:
        """The directory a name in this directory stands for, if it can be one."""
        uri = self.child_uri(name)
        return None if uri is None else AssetPrefix(uri + "/")


def scheme_prefix(name: str) -> AssetPrefix | None:
    """The directory ``assets/<name>``: ``https`` -> ``https://``, ``urn:`` -> ``urn:``."""
    opaque = name.endswith(":")
    scheme = name[:-1] if opaque else name
    if not _SCHEME.fullmatch(scheme):
        return None
    return AssetPrefix(f"{scheme}:" if opaque else f"{scheme}://")


def name_of(piece: str) -> str | None:
    """The file name of one piece of a URI, or None if it cannot be shown."""
    if piece == "":
        return EMPTY
    if piece == EMPTY or len(piece.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return None
    if urllib.parse.unquote(piece) in (".", ".."):
        return None
    return piece


def piece_of(name: str) -> str | None:
    """The piece of a URI a file name stands for (the inverse of ``name_of``)."""
    if name == EMPTY:
        return ""
    return name if name_of(name) == name else None


def split(uri: str) -> tuple[str, list[str]] | None:
    """The names of a URI's path below ``assets/``: its scheme directory and the rest;
    None for a URI that cannot be shown (see the module's rules)."""
    scheme, colon, rest = uri.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        return None
    if rest.startswith("//"):
        top, rest = scheme, rest[2:]
    else:
        top = f"{scheme}:"
    names = [name_of(piece) for piece in rest.split("/")]
    if not names or any(name is None for name in names):
        return None
    return top, [name for name in names if name is not None]


def child_name(prefix: AssetPrefix, uri: str) -> tuple[str, bool] | None:
    """The name in ``prefix``'s directory on the way to ``uri``, and whether that name is
    ``uri`` itself (True) or a directory on the way (False); None if ``uri`` is not
    below ``prefix`` or cannot be shown."""
    if not uri.startswith(prefix.text) or split(uri) is None:
        return None
    piece, slash, _ = uri[len(prefix.text) :].partition("/")
    name = name_of(piece)
    if name is None:
        return None
    return name, not slash
