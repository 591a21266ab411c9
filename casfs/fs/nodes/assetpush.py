"""Fetch and Push for the nodes: ``MountAssets``'s calls with its refusals as
``NodeError``, and the push that follows the commit of a file that has a URI (a file of
``assets/``, or one of ``uploads/`` given ``user.casfs.uri``)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Mapping

from casfs.assetnames import CHECKSUM_SRI, AssetNameError, check_qualifiers, check_uri, sri_of
from casfs.cas.errors import CasError
from casfs.digest import Digest, DigestFunction
from casfs.fs.assetcatalog import SRI_FUNCTIONS, AssetRefusal, with_checksum
from casfs.fs.assetindex import Record
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import MountState
from casfs.fs.uploadentries import FileEntry

log = logging.getLogger("casfs.fs")

XATTR_URI = b"user.casfs.uri"
QUALIFIER_PREFIX = b"user.casfs.qualifier."


def qualifier_xattrs(qualifiers: dict[str, str]) -> dict[bytes, bytes]:
    return {QUALIFIER_PREFIX + n.encode(): v.encode() for n, v in sorted(qualifiers.items())}


def changed_qualifiers(
    qualifiers: dict[str, str],
    name: bytes,
    value: bytes | None,
    *,
    checksum: DigestFunction | None = None,
) -> dict[str, str]:
    """``qualifiers`` with ``name`` (an attribute name) set to ``value`` (None: removed).
    A name that is not a qualifier's is ENOTSUP; one that is not UTF-8 EINVAL; a set over
    the API's bounds (``assetnames``) E2BIG; removing one that is not there ENODATA.
    ``checksum``: the function of a file still to be pushed, whose push adds a
    ``checksum.sri`` (``with_checksum``): the bounds count it already."""
    if not name.startswith(QUALIFIER_PREFIX):
        raise NodeError(errno.ENOTSUP)
    try:
        key = name[len(QUALIFIER_PREFIX) :].decode("utf-8")
        text = None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        raise NodeError(errno.EINVAL) from None
    changed = dict(qualifiers)
    if text is None:
        if changed.pop(key, None) is None:
            raise NodeError(errno.ENODATA)
        return changed
    changed[key] = text
    bounded = dict(changed)
    if checksum in SRI_FUNCTIONS:
        bounded[CHECKSUM_SRI] = sri_of(checksum, "0" * checksum.hex_length)
    try:
        check_qualifiers(bounded.items())
        return check_qualifiers(changed.items())
    except AssetNameError as error:
        bounds = ("longer than", "more than")
        raise NodeError(
            errno.E2BIG if any(b in str(error) for b in bounds) else errno.EINVAL
        ) from None


async def set_upload_xattr(
    state: MountState, entry: FileEntry, name: bytes, value: bytes | None
) -> None:
    """setxattr (``value``) or removexattr (None) on a file of ``uploads/``: its URI
    (``user.casfs.uri``) or a qualifier, kept on the file for the push after its commit
    and saved with it for a later mount (a committed file's journal record, and the
    spool metadata while a spool file exists); a committed file with a URI is pushed
    again at once."""
    if name == XATTR_URI:
        try:
            entry.uri = None if value is None else check_uri(value.decode("utf-8"))
        except (UnicodeDecodeError, AssetNameError):
            raise NodeError(errno.EINVAL) from None
    else:  # its push adds a checksum.sri: the bound counts it already, as in assets/
        entry.qualifiers = changed_qualifiers(
            entry.qualifiers, name, value, checksum=entry.function
        )
    if entry.committed:
        state.uploads.saved(entry)
    if entry.spool is not None:  # pending, or committed and still spooled: a crash now
        try:  # would bring the spool file back in place of the committed name
            state.uploads.spool.record(entry)
        except OSError as error:  # a full spool disk: this mount still has it
            log.warning("%s: cannot keep its asset name for a later mount (%s)",
                        entry.label(), error)  # fmt: skip
    await push_committed(state, entry)


def upload_xattrs(entry: FileEntry) -> dict[bytes, bytes]:
    """A file's URI and qualifiers as extended attributes."""
    values = qualifier_xattrs(entry.qualifiers)
    if entry.uri is not None:
        values[XATTR_URI] = entry.uri.encode()
    return values


async def resolve(state: MountState, instance: str, uri: str) -> Record | None:
    """``MountAssets.resolve``, its refusals as ``NodeError``."""
    try:
        return await state.assets.resolve(instance, uri)
    except AssetRefusal as refusal:
        raise NodeError(refusal.errno) from None


async def push(
    state: MountState, instance: str, uri: str, digest: Digest, qualifiers: Mapping[str, str]
) -> None:
    """``MountAssets.push``, its refusals as ``NodeError``."""
    try:
        await state.assets.push(instance, uri, digest, qualifiers)
    except AssetRefusal as refusal:
        raise NodeError(refusal.errno) from None


async def push_left_over(state: MountState, entries: Iterable[FileEntry]) -> None:
    """Push files an earlier mount left with an asset name not pushed yet (committed now,
    or restored from the journal), one after another; a failure is logged and the file
    stays unpushed (its next change, or the next mount, pushes it). A remote without the
    Remote Asset API refuses them all: that is logged once, with how many wait."""
    waiting = list(entries)
    for done, entry in enumerate(waiting):
        try:
            if state.assets.unavailable is None:
                await push_committed(state, entry)
        except (NodeError, CasError) as error:
            if state.assets.unavailable is None:
                log.warning("%s: push as %s: %s (not pushed)", entry.label(), entry.uri, error)
        except Exception:  # a background task: nothing may end the mount
            log.exception("%s: push as %s failed unexpectedly", entry.label(), entry.uri)
        if state.assets.unavailable is not None:  # this file and every one after it
            log.warning("%d files with an asset name stay unpushed: %s",
                        len(waiting) - done, state.assets.unavailable)  # fmt: skip
            return


async def push_committed(state: MountState, entry: FileEntry) -> None:
    """Push a committed file under its URI with its qualifiers, unless it has no URI or
    the name already says just that. Raises what the push raised: the caller's close or
    setxattr fails with it. One push of a name at a time (``MountAssets.changing``), of
    the file's URI, digest and qualifiers as they are once it holds the name."""
    uri = entry.uri
    if uri is None:
        return
    async with state.assets.changing(entry.instance, uri):
        digest = entry.digest
        if entry.uri != uri or digest is None or entry.unlinked:
            return  # renamed meanwhile: the change of its URI pushes it
        naming = entry.naming()
        known = state.assets.record(entry.instance, uri)
        if not (
            known is not None
            and (known.digest, known.directory) == (digest, False)
            and dict(known.qualifiers) == with_checksum(entry.qualifiers, digest)
        ):
            await push(state, entry.instance, uri, digest, entry.qualifiers)
        if entry.naming() == naming and not entry.pushed:  # unchanged by others meanwhile
            entry.pushed_as = naming
            state.uploads.saved(entry)  # a later mount pushes only what this one did not
