"""REAPI digests: which hash function, the ``(hash, size)`` value, and computing one.

A :class:`Digest` is always valid once constructed: lowercase hex of the length its
:class:`DigestFunction` produces, and a size in ``[0, 2**63)``. Every malformed digest
raises :class:`DigestError`, whose message names the offending part.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import blake3

if TYPE_CHECKING:
    from casfs._proto import remote_execution_pb2

MAX_SIZE = 2**63 - 1
"""The largest size a digest may carry (``size_bytes`` is an int64)."""

_HEX = re.compile(r"[0-9a-f]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")  # canonical ASCII decimal, at most 19 digits


class DigestError(ValueError):
    """A digest, a digest's text, or a digest function name is malformed or unsupported."""


def _clip(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, shortened to about ``limit`` characters for error messages."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"


class DigestFunction(enum.Enum):
    """A REAPI ``DigestFunction.Value``; member values are the protocol numbers."""

    SHA256 = 1
    SHA1 = 2
    MD5 = 3
    VSO = 4
    SHA384 = 5
    SHA512 = 6
    MURMUR3 = 7
    SHA256TREE = 8
    BLAKE3 = 9

    @property
    def name_lower(self) -> str:
        """The lowercase name used in resource names and on the command line."""
        return self.name.lower()

    @property
    def hex_length(self) -> int:
        """How many hex digits a hash of this function has."""
        return _HEX_LENGTHS[self]

    @property
    def in_resource_name(self) -> bool:
        """Whether resource names carry a ``{digest_function}/`` segment for this function.

        REAPI requires the segment to be omitted for the legacy functions (MD5, MURMUR3,
        SHA1, SHA256, SHA384, SHA512, VSO), whose function is inferred from hash length.
        """
        return self in (DigestFunction.SHA256TREE, DigestFunction.BLAKE3)

    @property
    def hashable(self) -> bool:
        """Whether casfs can compute digests of this function (see :func:`new_hasher`)."""
        return self in _HASHABLE

    @classmethod
    def from_name(cls, name: str) -> DigestFunction:
        """The function called ``name``, case-insensitively (``"sha256"``, ``"BLAKE3"``)."""
        function = _BY_NAME.get(name.lower()) if name.isascii() else None
        if function is None:
            raise DigestError(f"unknown digest function {_clip(name)}")
        return function

    @classmethod
    def from_hex_length(cls, length: int) -> DigestFunction:
        """Infer a legacy function from a hash length, as REAPI resource names require.

        Only the functions casfs can compute are candidates, so 32 means MD5 (not
        MURMUR3) and VSO's 66 is not recognised.
        """
        try:
            return _BY_HEX_LENGTH[length]
        except KeyError:
            raise DigestError(
                f"cannot infer a digest function from a hash of {length} hex digits"
            ) from None


_HEX_LENGTHS = {
    DigestFunction.SHA256: 64,
    DigestFunction.SHA1: 40,
    DigestFunction.MD5: 32,
    DigestFunction.VSO: 66,
    DigestFunction.SHA384: 96,
    DigestFunction.SHA512: 128,
    DigestFunction.MURMUR3: 32,
    DigestFunction.SHA256TREE: 64,
    DigestFunction.BLAKE3: 64,
}
_HASHLIB_FUNCTIONS = frozenset(
    {
        DigestFunction.SHA256,
        DigestFunction.SHA1,
        DigestFunction.MD5,
        DigestFunction.SHA384,
        DigestFunction.SHA512,
    }
)
_HASHABLE = _HASHLIB_FUNCTIONS | {DigestFunction.BLAKE3}
_BY_HEX_LENGTH = {fn.hex_length: fn for fn in _HASHLIB_FUNCTIONS}
_BY_NAME = {fn.name_lower: fn for fn in DigestFunction}


@dataclass(frozen=True, slots=True)
class Digest:
    """A REAPI digest: the hash of a blob, its size in bytes, and the hash function."""

    hash: str
    size: int
    function: DigestFunction = DigestFunction.SHA256

    def __post_init__(self) -> None:
        if not isinstance(self.function, DigestFunction):
            raise DigestError(f"digest function must be a DigestFunction, not {self.function!r}")
        if not isinstance(self.hash, str):
            raise DigestError(f"digest hash must be a str, not {type(self.hash).__name__}")
        if not _HEX.fullmatch(self.hash):
            problem = "uppercase" if _HEX.fullmatch(self.hash.lower()) else "non-hex"
            raise DigestError(f"digest hash {_clip(self.hash)} has {problem} characters")
        if len(self.hash) != self.function.hex_length:
            raise DigestError(
                f"digest hash {_clip(self.hash)} has {len(self.hash)} hex digits; "
                f"{self.function.name_lower} needs {self.function.hex_length}"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise DigestError(f"digest size must be an int, not {type(self.size).__name__}")
        if self.size < 0:
            raise DigestError("digest size is negative")
        if self.size > MAX_SIZE:
            raise DigestError("digest size is 2**63 or more")

    @classmethod
    def parse(cls, text: str, function: DigestFunction | None = None) -> Digest:
        """Parse ``"<hash>/<size>"``; ``function`` defaults to SHA256.

        The size must be canonical ASCII decimal: no sign, no spaces, no leading zeros.
        """
        hash_, slash, size = text.partition("/")
        if not slash:
            raise DigestError(f"digest {_clip(text)} is not of the form <hash>/<size>")
        if not _SIZE.fullmatch(size):
            raise DigestError(
                f"digest size {_clip(size)} is not a canonical decimal number below 2**63"
            )
        return cls(hash_, int(size), DigestFunction.SHA256 if function is None else function)

    def __str__(self) -> str:
        return f"{self.hash}/{self.size}"

    @classmethod
    def of_bytes(cls, data: bytes, function: DigestFunction = DigestFunction.SHA256) -> Digest:
        """The digest of ``data``."""
        builder = DigestBuilder(function)
        builder.update(data)
        return builder.digest()

    @classmethod
    def empty(cls, function: DigestFunction = DigestFunction.SHA256) -> Digest:
        """The digest of the empty blob, which REAPI servers must always serve."""
        return cls.of_bytes(b"", function)

    @property
    def is_empty(self) -> bool:
        """Whether this is the empty blob's digest, the only one of size 0 (for functions
        casfs cannot compute, no digest is)."""
        return self.size == 0 and self.function.hashable and self == Digest.empty(self.function)

    def to_proto(self) -> remote_execution_pb2.Digest:
        """This digest as a REAPI ``Digest`` message (the function is not part of it)."""
        from casfs._proto import remote_execution_pb2

        return remote_execution_pb2.Digest(hash=self.hash, size_bytes=self.size)

    @classmethod
    def from_proto(
        cls,
        message: remote_execution_pb2.Digest,
        function: DigestFunction = DigestFunction.SHA256,
    ) -> Digest:
        """Validate a REAPI ``Digest`` message, whose function is known from context."""
        return cls(message.hash, message.size_bytes, function)


class Hasher(Protocol):
    """The part of the ``hashlib`` interface casfs uses."""

    def update(self, data: bytes | memoryview, /) -> object:
        """Feed more bytes; any return value (``blake3`` returns itself) is ignored."""

    def hexdigest(self) -> str:
        """Lowercase hex of the hash of everything fed so far."""


def new_hasher(function: DigestFunction) -> Hasher:
    """A fresh hasher for ``function``; :class:`DigestError` if casfs cannot compute it."""
    if function is DigestFunction.BLAKE3:
        return blake3.blake3()
    if function in _HASHLIB_FUNCTIONS:
        return hashlib.new(function.name_lower, usedforsecurity=False)
    raise DigestError(f"casfs cannot compute {function.name_lower} digests")


class DigestBuilder:
    """Compute a digest incrementally: ``update`` with chunks, then ``digest()``."""

    __slots__ = ("_function", "_hasher", "_size")

    def __init__(self, function: DigestFunction = DigestFunction.SHA256) -> None:
        self._function = function
        self._hasher = new_hasher(function)
        self._size = 0

    @property
    def size(self) -> int:
        """How many bytes have been fed so far."""
        return self._size

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next chunk."""
        self._hasher.update(data)
        self._size += data.nbytes if isinstance(data, memoryview) else len(data)

    def digest(self) -> Digest:
        """The digest of everything fed so far (more may be fed afterwards)."""
        return Digest(self._hasher.hexdigest(), self._size, self._function)


def digest_file(
    path: os.PathLike[str] | str,
    function: DigestFunction = DigestFunction.SHA256,
    chunk_size: int = 1 << 20,
    progress: Callable[[int], None] | None = None,
) -> Digest:
    """The digest of the file at ``path``, read in ``chunk_size`` pieces; ``progress`` is
    told the bytes hashed so far after each piece."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    builder = DigestBuilder(function)
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            builder.update(view[:count])
            if progress is not None:
                progress(builder.size)
    return builder.digest()
