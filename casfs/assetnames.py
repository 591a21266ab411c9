"""Remote Asset names: the checks and limits on URIs and qualifiers that the server, the
client and the CLI share, and Subresource Integrity (the ``checksum.sri`` qualifier).

Every check raises :class:`AssetNameError` with a message naming the offending part; the
server sends it as INVALID_ARGUMENT, the CLI prints it and exits 2.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Iterable, Sequence

from casfs.digest import DigestFunction

# Per request (Push or Fetch). A qualifier value may be a namespace's JSON document.
MAX_URIS = 32
MAX_URI_BYTES = 4096
MAX_QUALIFIERS = 32
MAX_QUALIFIER_NAME_BYTES = 256
MAX_QUALIFIER_VALUE_BYTES = 16 << 10
MAX_QUALIFIERS_BYTES = 64 << 10
MAX_REFERENCES = 10_000

CHECKSUM_SRI = "checksum.sri"
RESOURCE_TYPE = "resource_type"
CONTENT_TYPE = "content_type"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_SRI_FUNCTIONS = {
    "sha256": DigestFunction.SHA256,
    "sha384": DigestFunction.SHA384,
    "sha512": DigestFunction.SHA512,
}


class AssetNameError(ValueError):
    """A URI, qualifier or checksum the Remote Asset API refuses."""


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_uri(uri: str) -> str:
    """``uri`` if it is an absolute URI casfs accepts: a scheme, at most 4096 bytes, no
    control characters or spaces, an authority ``urllib`` can split (no unmatched ``[``
    or ``]``), no ``.`` or ``..`` path segment (plain or percent-encoded), so that no
    view of it as a path can leave its directory."""
    if not uri:
        raise AssetNameError("an asset URI is empty")
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
        raise AssetNameError(f"asset URI {_clip(uri)} is longer than {MAX_URI_BYTES} bytes")
    if _CONTROL.search(uri):
        raise AssetNameError(f"asset URI {_clip(uri)} has a control character or a space")
    if not _SCHEME.match(uri):
        raise AssetNameError(f"asset URI {_clip(uri)} has no scheme (such as https:)")
    try:
        path = urllib.parse.urlsplit(uri).path
    except ValueError:  # an authority with an unmatched '[' or ']'
        raise AssetNameError(f"asset URI {_clip(uri)} has a malformed authority") from None
    for segment in path.split("/"):
        if urllib.parse.unquote(segment) in (".", ".."):
            raise AssetNameError(f"asset URI {_clip(uri)} has a '.' or '..' path segment")
    return uri


def check_uris(uris: Sequence[str], *, at_least_one: bool = True) -> list[str]:
    """The URIs of one request, each checked, at most ``MAX_URIS``."""
    if at_least_one and not uris:
        raise AssetNameError("a request needs at least one URI")
    if len(uris) > MAX_URIS:
        raise AssetNameError(f"{len(uris)} URIs in one request; the limit is {MAX_URIS}")
    return [check_uri(uri) for uri in uris]


def check_qualifiers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The qualifiers of one request as a dict: names unique, non-empty, without control
    characters; at most ``MAX_QUALIFIERS``, each name and value and the whole bounded."""
    qualifiers: dict[str, str] = {}
    total = 0
    for name, value in pairs:
        if not name or _CONTROL.search(name):
            raise AssetNameError(
                f"qualifier name {_clip(name)} is empty or has a control character"
            )
        if name in qualifiers:
            raise AssetNameError(f"qualifier {_clip(name)} is given twice")
        name_bytes = len(name.encode("utf-8", "surrogatepass"))
        value_bytes = len(value.encode("utf-8", "surrogatepass"))
        if name_bytes > MAX_QUALIFIER_NAME_BYTES:
            raise AssetNameError(
                f"qualifier name {_clip(name)} is longer than {MAX_QUALIFIER_NAME_BYTES} bytes"
            )
        if value_bytes > MAX_QUALIFIER_VALUE_BYTES:
            raise AssetNameError(
                f"qualifier {_clip(name)} has a value longer than {MAX_QUALIFIER_VALUE_BYTES} bytes"
            )
        if "\x00" in value:
            raise AssetNameError(f"qualifier {_clip(name)} has a NUL in its value")
        qualifiers[name] = value
        total += name_bytes + value_bytes
        if len(qualifiers) > MAX_QUALIFIERS:
            raise AssetNameError(f"more than {MAX_QUALIFIERS} qualifiers in one request")
        if total > MAX_QUALIFIERS_BYTES:
            raise AssetNameError(f"qualifiers of more than {MAX_QUALIFIERS_BYTES} bytes in all")
    return qualifiers


def parse_qualifier_arg(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line (the value may contain '=')."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise AssetNameError(f"a qualifier needs NAME=VALUE, got {_clip(text)}")
    return name, value


def sri_hashes(value: str) -> list[tuple[DigestFunction, str]]:
    """The (function, lowercase hex hash) pairs of a Subresource Integrity value, such as
    ``sha256-<base64>``; several space-separated tokens are all returned, options after
    ``?`` ignored. Raises ``AssetNameError`` for a malformed or unknown token."""
    hashes: list[tuple[DigestFunction, str]] = []
    for token in value.split():
        algorithm, dash, encoded = token.partition("?")[0].partition("-")
        function = _SRI_FUNCTIONS.get(algorithm)
        if not dash or function is None:
            raise AssetNameError(
                f"checksum.sri {_clip(token)} is not <sha256|sha384|sha512>-<base64>"
            )
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise AssetNameError(f"checksum.sri {_clip(token)} is not valid base64") from None
        if len(raw) * 2 != function.hex_length:
            raise AssetNameError(
                f"checksum.sri {_clip(token)} has {len(raw)} bytes; {algorithm} has "
                f"{function.hex_length // 2}"
            )
        hashes.append((function, raw.hex()))
    if not hashes:
        raise AssetNameError("checksum.sri is empty")
    return hashes


def sri_of(function: DigestFunction, hex_hash: str) -> str:
    """The Subresource Integrity value of a hash (the inverse of :func:`sri_hashes`)."""
    name = next((n for n, f in _SRI_FUNCTIONS.items() if f is function), None)
    if name is None:
        raise AssetNameError(f"Subresource Integrity has no {function.name_lower}")
    return f"{name}-{base64.b64encode(bytes.fromhex(hex_hash)).decode()}"
