"""ByteStream resource names for REAPI CAS blobs: parsing and formatting, nothing else.

The grammar, from ``remote_execution.proto``::

    {instance}/blobs/{digest_function/}{hash}/{size}{/metadata}
    {instance}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/metadata}
    {instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata}
    {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/metadata}

The instance name may be empty (the name then starts at ``blobs/`` or ``uploads/``) or
span several segments, none of which is a reserved word, so the first reserved word ends
it. The ``digest_function/`` segment is present only for functions whose
:attr:`~casfs.digest.DigestFunction.in_resource_name` is true; for the legacy ones it is
omitted and the function is inferred from the hash length. Compressed names give the
uncompressed digest, with a compressor other than ``identity``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from casfs.digest import Digest, DigestError, DigestFunction

RESERVED = frozenset(
    {
        "blobs",
        "uploads",
        "compressed-blobs",
        "actions",
        "actionResults",
        "operations",
        "capabilities",
    }
)
"""Words that never name an instance segment."""

_BLOBS = "blobs"
_COMPRESSED_BLOBS = "compressed-blobs"
_UPLOADS = "uploads"
_FUNCTIONS_BY_NAME = {function.name_lower: function for function in DigestFunction}


class ResourceNameError(ValueError):
    """A resource name (or a part meant for one) is malformed."""


def _error(problem: str, name: str) -> ResourceNameError:
    """An error saying what is wrong with ``name``, quoting at most 200 characters of it."""
    quoted = repr(name) if len(name) <= 200 else f"{name[:200]!r}... ({len(name)} chars)"
    return ResourceNameError(f"{problem}: {quoted}")


class Compressor(enum.Enum):
    """A REAPI ``Compressor.Value``; member values are the protocol numbers."""

    IDENTITY = 0
    ZSTD = 1
    DEFLATE = 2
    BROTLI = 3

    @property
    def name_lower(self) -> str:
        """The lowercase name used in ``compressed-blobs/`` resource names."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Compressor:
        """The compressor called ``name``, case-insensitively (``"zstd"``, ``"ZSTD"``)."""
        compressor = _COMPRESSORS_BY_NAME.get(name.lower()) if name.isascii() else None
        if compressor is None:
            raise _error("unknown compressor", name)
        return compressor


_COMPRESSORS_BY_NAME = {compressor.name_lower: compressor for compressor in Compressor}


def _split(text: str, what: str) -> list[str]:
    """The ``/``-separated segments of ``text``, none of them empty or containing NUL."""
    if not text:
        raise _error(f"empty {what}", text)
    if "\0" in text:
        raise _error(f"NUL character in {what}", text)
    segments = text.split("/")
    if "" in segments:
        raise _error(f"empty path segment in {what}", text)
    return segments


def _check_instance_segments(segments: Sequence[str], name: str) -> None:
    """Reject instance segments that are reserved words, ``.`` or ``..``."""
    for segment in segments:
        if segment in RESERVED:
            raise _error(f"reserved word {segment!r} used as an instance name segment", name)
        if segment in (".", ".."):
            raise _error(f"{segment!r} used as an instance name segment", name)


def validate_instance_name(instance: str) -> None:
    """Raise :class:`ResourceNameError` unless ``instance`` can prefix a resource name.

    The empty instance is valid. Otherwise every ``/``-separated segment must be
    non-empty, free of NUL, and neither a reserved word nor ``.`` or ``..``.
    """
    if instance:
        _check_instance_segments(_split(instance, "instance name"), instance)


def instance_path(instance: str) -> str:
    """The prefix ``instance`` contributes to a resource name: ``""`` or ``"a/b/"``."""
    return f"{instance}/" if instance else ""


def blob_path(digest: Digest) -> str:
    """The ``{digest_function/}{hash}/{size}`` part of a resource name for ``digest``.

    Legacy functions get no segment; a reader infers them from the hash length, which
    cannot tell MURMUR3 from MD5 (it picks MD5) nor recognise VSO.
    """
    function = digest.function
    prefix = f"{function.name_lower}/" if function.in_resource_name else ""
    return f"{prefix}{digest}"


@dataclass(frozen=True, slots=True)
class BlobName:
    """A CAS blob resource name, for reading or (with ``upload_id``) for writing.

    Fields are validated on construction, raising :class:`ResourceNameError`.
    ``compressor`` is ``IDENTITY`` for the plain ``blobs/`` form; otherwise ``digest``
    is still the digest of the uncompressed blob. ``metadata`` is the text after the
    size, without its leading ``/``; servers ignore it.
    """

    instance: str
    digest: Digest
    compressor: Compressor = Compressor.IDENTITY
    upload_id: str | None = None
    metadata: str = ""

    def __post_init__(self) -> None:
        validate_instance_name(self.instance)
        if self.upload_id is not None:
            if "/" in self.upload_id:
                raise _error("'/' in upload id", self.upload_id)
            _split(self.upload_id, "upload id")
            if self.upload_id in RESERVED:
                raise _error("reserved word used as upload id", self.upload_id)
        if self.metadata:
            _split(self.metadata, "metadata")

    def read_name(self) -> str:
        """This blob's read resource name (``upload_id`` is not part of it)."""
        return f"{instance_path(self.instance)}{self._blob_part()}"

    def write_name(self) -> str:
        """This blob's write resource name; ``ValueError`` if ``upload_id`` is ``None``."""
        if self.upload_id is None:
            raise ValueError("a write resource name needs an upload_id")
        return f"{instance_path(self.instance)}{_UPLOADS}/{self.upload_id}/{self._blob_part()}"

    def _blob_part(self) -> str:
        """Everything from ``blobs/`` or ``compressed-blobs/`` to the end."""
        if self.compressor is Compressor.IDENTITY:
            kind = _BLOBS
        else:
            kind = f"{_COMPRESSED_BLOBS}/{self.compressor.name_lower}"
        tail = f"/{self.metadata}" if self.metadata else ""
        return f"{kind}/{blob_path(self.digest)}{tail}"


def _take(parts: Iterator[str], what: str, name: str) -> str:
    """The next segment, which must exist and is described as ``what`` if it does not."""
    part = next(parts, None)
    if part is None:
        raise _error(f"missing {what}", name)
    return part


def _parse(name: str, *, upload: bool) -> BlobName:
    """Parse a read name, or a write name if ``upload``."""
    segments = _split(name, "resource name")
    start = next((i for i, segment in enumerate(segments) if segment in RESERVED), None)
    if start is None:
        raise _error("no 'blobs', 'compressed-blobs' or 'uploads' segment", name)
    _check_instance_segments(segments[:start], name)
    parts = iter(segments[start:])

    upload_id = None
    if upload:
        if next(parts) != _UPLOADS:
            raise _error(f"write name does not have {_UPLOADS!r} after the instance", name)
        upload_id = _take(parts, "upload id", name)
        if upload_id in RESERVED:
            raise _error(f"missing upload id before {upload_id!r}", name)

    compressor, digest = _parse_blob(parts, name)
    return BlobName("/".join(segments[:start]), digest, compressor, upload_id, "/".join(parts))


def _parse_blob(parts: Iterator[str], name: str) -> tuple[Compressor, Digest]:
    """Consume ``[compressed-]blobs/...{hash}/{size}`` from ``parts``, leaving the metadata."""
    kind = _take(parts, f"{_BLOBS!r} or {_COMPRESSED_BLOBS!r}", name)
    compressor = Compressor.IDENTITY
    if kind == _COMPRESSED_BLOBS:
        compressor_name = _take(parts, "compressor", name)
        compressor = _COMPRESSORS_BY_NAME.get(compressor_name, Compressor.IDENTITY)
        if compressor is Compressor.IDENTITY:
            raise _error(f"compressor {compressor_name!r} is not zstd, deflate or brotli", name)
    elif kind != _BLOBS:
        raise _error(f"expected {_BLOBS!r} or {_COMPRESSED_BLOBS!r}, found {kind!r}", name)

    hash_ = _take(parts, "hash", name)
    function = _FUNCTIONS_BY_NAME.get(hash_)
    if function is not None:
        if not function.in_resource_name:
            raise _error(f"digest function {hash_!r} must be omitted (inferred from hash)", name)
        hash_ = _take(parts, "hash", name)
    size = _take(parts, "size", name)
    try:
        if function is None:
            function = DigestFunction.from_hex_length(len(hash_))
        return compressor, Digest.parse(f"{hash_}/{size}", function)
    except DigestError as error:
        raise _error(str(error), name) from error


def parse_read_name(name: str) -> BlobName:
    """Parse ``{instance}/[compressed-]blobs/...``; ``upload_id`` is ``None``."""
    return _parse(name, upload=False)


def parse_write_name(name: str) -> BlobName:
    """Parse ``{instance}/uploads/{uuid}/[compressed-]blobs/...``."""
    return _parse(name, upload=True)
