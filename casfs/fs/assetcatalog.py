"""What the mount knows of Remote Asset names: the answers of Fetch, the names this mount
pushed, the directories a user made, and (when the store's index file is readable, as for
the embedded CAS) the store's catalog. No FUSE in here; ``fs/nodes/assets.py`` shows it.

The Remote Asset API has no listing. So:

- A full path is answered by FetchBlob of its URI (then FetchDirectory), against any
  server: an answer is a file (or a directory asset), NOT_FOUND is no such name.
- A listing shows the names this mount fetched or pushed, the directories made with
  mkdir (kept in memory only), and, with a readable index, every live name in it.
- With a readable index, a name that is a prefix of a name in it is a directory. Against
  another server, only the scheme and authority levels (``assets/https/<host>/``) are
  directories for any name; deeper ones must be known first (fetched, pushed, mkdir).
- An answer whose blob is gone from the CAS is NOT_FOUND (casfs's server checks), so an
  evicted asset is no such name. Answers are kept ``ANSWER_TTL`` seconds, so a name
  pushed elsewhere or evicted shows so soon.
- A server without the API (UNIMPLEMENTED) is remembered: every later asset request is
  refused at once (ENOTSUP in the mount), logged once, and ``casfs status`` says why.

Concurrency notes: used from the mount's trio thread only. The index is read in a
worker thread, one listing's queries in one call (``fs/assetindex.py``): a listing
awaits it, and changes what it remembers of the rows after the wait. A request that
awaits Fetch or Push looks the records up again afterwards. Changes of one name's
qualifiers take its lock (``changing``): each reads the set, changes one and pushes the
whole set, so two at once would undo one another (the kernel serializes setxattr on one
inode, but not a lookup's Fetch, nor two inodes of one URI: an asset and an
``uploads/`` file given its URI). A Fetch answer never replaces what a push (or a later
answer) remembered while it was on its way.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from casfs.assetnames import CHECKSUM_SRI, check_qualifiers, sri_of
from casfs.cas.assets import AssetClient, FetchedAsset, NoAssetApi
from casfs.cas.errors import NotFound
from casfs.digest import Digest, DigestFunction
from casfs.fs.assetindex import CatalogIndex, Record
from casfs.fs.assetpaths import AssetPrefix, child_name

log = logging.getLogger("casfs.fs")

ANSWER_TTL = 2.0  # seconds a Fetch answer (or a NOT_FOUND) is used again
MAX_RECORDS = 100_000  # names remembered (oldest go first)
SRI_FUNCTIONS = (DigestFunction.SHA256, DigestFunction.SHA384, DigestFunction.SHA512)


def record_of(fetched: FetchedAsset, *, directory: bool) -> Record:
    """A Fetch answer as a record."""
    return Record(fetched.uri, fetched.digest, directory, dict(fetched.qualifiers))


def with_checksum(qualifiers: Mapping[str, str], digest: Digest) -> dict[str, str]:
    """The qualifiers to push ``digest`` with: ``checksum.sri`` set to its hash (as
    ``casfs asset push`` does for a file), so a fetch by checksum finds it."""
    pushed = {n: v for n, v in qualifiers.items() if n != CHECKSUM_SRI}
    if digest.function in SRI_FUNCTIONS:
        pushed[CHECKSUM_SRI] = sri_of(digest.function, digest.hash)
    return check_qualifiers(pushed.items())


def directories_above(uri: str) -> list[str]:
    """The directory texts on the way to ``uri``: ``https://``, ``https://h/``, ... (for
    a URI ending in ``/``, that one too)."""
    scheme, _, rest = uri.partition(":")
    top = f"{scheme}://" if rest.startswith("//") else f"{scheme}:"
    texts = [top]
    start = len(top)
    while (slash := uri.find("/", start)) != -1:
        texts.append(uri[: slash + 1])
        start = slash + 1
    return texts


class AssetRefusal(Exception):
    """An asset request refused without a failure to log (the nodes answer its errno):
    ENOTSUP with no Remote Asset API, EINVAL for qualifiers the API would refuse."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code


class MountAssets:
    """The asset names of one mount, per instance."""

    def __init__(self, clients: Mapping[str, AssetClient], index_root: Path | None = None) -> None:
        self.clients = clients
        self.index = None if index_root is None else CatalogIndex(index_root)
        self.unavailable: str | None = None  # why the remote answers no asset request
        self.fetches = 0
        self.pushes = 0
        # (instance, URI) -> (when, the answer: None for NOT_FOUND)
        self._records: OrderedDict[tuple[str, str], tuple[float, Record | None]] = OrderedDict()
        # What listings of the index showed: attributes for readdir, never a Fetch's answer.
        self._listed: OrderedDict[tuple[str, str], Record] = OrderedDict()
        self._made: set[tuple[str, str]] = set()  # prefixes made by mkdir
        # (instance, prefix) -> how many remembered assets and mkdirs are below it
        self._directories: Counter[tuple[str, str]] = Counter()
        self.pending: dict[tuple[str, str], int] = {}  # URI -> id of the upload writing it
        # (instance, URI) -> its lock and how many hold it or wait for it
        self._locks: dict[tuple[str, str], tuple[trio.Lock, int]] = {}

    def status(self) -> dict[str, object]:
        """What ``casfs status`` shows of the assets."""
        return {
            "api": "unavailable" if self.unavailable else "available",
            "reason": self.unavailable,
            "catalog": str(self.index.path) if self.index and self.index.readable else None,
            "fetches": self.fetches,
            "pushes": self.pushes,
        }

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    @asynccontextmanager
    async def changing(self, instance: str, uri: str) -> AsyncIterator[None]:
        """Hold the lock of one name while its qualifiers are read, changed and pushed
        (first come, first served). Cancelled while waiting, the caller never held it;
        however the body ends, the lock is given back (and forgotten once nobody waits)."""
        key = (instance, uri)
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    # -- the remote ---------------------------------------------------------------------

    def _client(self, instance: str) -> AssetClient:
        client = self.clients.get(instance)
        if self.unavailable is not None or client is None:
            raise AssetRefusal(errno.ENOTSUP)
        return client

    def _no_api(self, error: NoAssetApi) -> AssetRefusal:
        if self.unavailable is None:
            self.unavailable = str(error)
            log.warning("assets/: %s; asset requests are refused (ENOTSUP)", error)
        return AssetRefusal(errno.ENOTSUP)

    def _remember(self, key: tuple[str, str], record: Record | None) -> None:
        self._count(key, self._records.get(key), -1)
        self._records[key] = entry = (time.monotonic(), record)
        self._count(key, entry, 1)
        self._records.move_to_end(key)
        while len(self._records) > MAX_RECORDS:
            self._count(*self._records.popitem(last=False), -1)

    def _count(
        self, key: tuple[str, str], entry: tuple[float, Record | None] | None, step: int
    ) -> None:
        """Count (or uncount) a remembered asset in the directories above it."""
        if entry is None or entry[1] is None:
            return
        for text in directories_above(key[1]):
            where = (key[0], text)
            self._directories[where] += step
            if self._directories[where] <= 0:
                del self._directories[where]

    def record(self, instance: str, uri: str) -> Record | None:
        """The last answer for a URI, however old, or what a listing showed of it (None:
        neither, or the last answer was NOT_FOUND)."""
        known = self._records.get((instance, uri))
        return self._listed.get((instance, uri)) if known is None else known[1]

    async def resolve(self, instance: str, uri: str) -> Record | None:
        """What ``uri`` names now: FetchBlob, then FetchDirectory (answers kept
        ``ANSWER_TTL``); None if nothing. ``AssetRefusal(ENOTSUP)`` without the API;
        other ``CasError``s pass (EIO, ...)."""
        key = (instance, uri)
        known = self._records.get(key)
        if known is not None and time.monotonic() - known[0] < ANSWER_TTL:
            return known[1]
        client = self._client(instance)
        record: Record | None
        started = time.monotonic()
        self.fetches += 1
        try:
            try:
                record = record_of(await client.fetch_blob([uri]), directory=False)
            except NotFound:
                record = record_of(await client.fetch_directory([uri]), directory=True)
        except NotFound:
            record = None
        except NoAssetApi as error:
            raise self._no_api(error) from None
        if record is not None and record.uri != uri:  # the server answered another name
            record = Record(uri, record.digest, record.directory, record.qualifiers)
        newer = self._records.get(key)
        if newer is not None and newer[0] >= started:
            return newer[1]  # a push (or another answer) came while this one was asked
        self._remember(key, record)
        return record

    async def push(
        self, instance: str, uri: str, digest: Digest, qualifiers: Mapping[str, str]
    ) -> Record:
        """Name ``digest`` (in the CAS) ``uri`` with ``qualifiers`` plus its checksum.
        Raises what the push raised (the name is then not shown), ``AssetRefusal(ENOTSUP)``
        without the API, ``AssetRefusal(EINVAL)`` for qualifiers over the bounds."""
        try:
            pushed = with_checksum(qualifiers, digest)
        except ValueError:
            raise AssetRefusal(errno.EINVAL) from None
        client = self._client(instance)
        self.pushes += 1
        try:
            await client.push_blob([uri], digest, pushed)
        except NoAssetApi as error:
            raise self._no_api(error) from None
        record = Record(uri, digest, False, pushed)
        self._remember((instance, uri), record)
        return record

    # -- listings -------------------------------------------------------------------------

    def make(self, instance: str, prefix: AssetPrefix) -> None:
        """Remember a directory made by mkdir (this mount only, until it ends)."""
        if (instance, prefix.text) not in self._made:
            self._made.add((instance, prefix.text))
            for text in directories_above(prefix.text):
                self._directories[(instance, text)] += 1

    def _known(self, instance: str) -> list[Record]:
        return [r for (inst, _), (_, r) in self._records.items() if inst == instance and r]

    async def is_directory(self, instance: str, prefix: AssetPrefix) -> bool:
        """Whether some known name is below ``prefix`` (or mkdir made it). Cancelled,
        as ``CatalogIndex`` says."""
        if self._directories[(instance, prefix.text)] > 0:
            return True
        return self.index is not None and await self.index.has_below(prefix.text)

    async def children(self, instance: str, prefix: AssetPrefix) -> dict[str, Record | None]:
        """The names in ``prefix``'s directory: a record for an asset, None for a
        directory (a directory wins over an asset of the same name). The index's rows
        are read first (in a thread, ``CatalogIndex``; cancelled, nothing is changed),
        then this mount's names as they are after that wait."""
        indexed = [] if self.index is None else await self.index.children(prefix.text)
        found: dict[str, Record | None] = {}

        def add(uri: str, record: Record | None) -> None:
            step = child_name(prefix, uri)
            if step is None:
                return
            name, whole = step
            if not whole or record is None:
                found[name] = None
            elif name not in found:
                found[name] = record

        for inst, made in self._made:
            if inst == instance and made != prefix.text:
                add(made, None)
        for record in self._known(instance):
            add(record.uri, record)
        for record in indexed:
            add(record.uri, record)
            key = (instance, record.uri)
            self._listed[key] = record
            self._listed.move_to_end(key)
        while len(self._listed) > MAX_RECORDS:
            self._listed.popitem(last=False)
        return found

    async def schemes(self, instance: str) -> list[str]:
        """The scheme directories known (``https``, ``urn:``, ...); the index is read
        first (in a thread), this mount's names after that wait."""
        uris = [] if self.index is None else await self.index.scheme_uris()
        uris += [made for inst, made in self._made if inst == instance]
        uris += [record.uri for record in self._known(instance)]
        names = set()
        for uri in uris:
            scheme, _, rest = uri.partition(":")
            names.add(scheme if rest.startswith("//") else f"{scheme}:")
        return sorted(names)
