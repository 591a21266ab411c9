"""The server's partial uploads: ByteStream Write sessions persisted as
``uploads/<name>.part``, by name, within limits.

A session is named by its write resource name (instance, upload id, digest, compressor),
so a client that reconnects, even to a restarted server, finds the bytes it already sent:
``committed_size`` is the length of the ``.part`` file, whose name is
``<function>.<hash>.<size>.<compressor>.<key>.part`` (``key`` from the resource name).

Partial uploads are bounded (``UploadLimits``): their count and their bytes in all, past
which a new one or a further write is refused with ``StoreFull``, after reclaiming the
abandoned ones, those nobody wrote for ``abandon_after`` seconds and no stream holds
(reclaimed also at start-up, and whenever a session is made, at most once a minute).
Sessions that hold no bytes are forgotten once as many sessions as ``max_count`` are in
memory. A new session of a digest takes over the ``.part`` of another session of the same
digest and compressor that no stream holds (the one with the most bytes), so a client that
retries under a new upload id after a crash resumes (QueryWriteStatus on the new name
reports the bytes) instead of leaving the old bytes behind; the old name then has none.

One session's ``.part`` file, hash and commit are ``casfs.store.partfile``'s.

Concurrency notes: one stream at a time writes a session (``UploadSessions.open`` holds
the session's lock for the whole stream and waits up to ``busy_timeout`` for a previous
stream, e.g. one whose client vanished, to let go).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from casfs.config import DEFAULT_ABANDON_AFTER, DEFAULT_MAX_PARTIAL_UPLOADS
from casfs.digest import Digest
from casfs.resource import Compressor
from casfs.store.blobstore import BlobStore
from casfs.store.errors import (
    BlobNotFound,
    StoreFull,
    UploadBusy,
)
from casfs.store.partfile import UploadSession, check_supported

log = logging.getLogger("casfs.store")


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Bounds on a store's partial uploads (``.part`` files); ``max_bytes`` None: only the
    disk bounds their bytes."""

    max_bytes: int | None = None
    max_count: int = DEFAULT_MAX_PARTIAL_UPLOADS
    abandon_after: float = DEFAULT_ABANDON_AFTER

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.abandon_after <= 0 or (self.max_bytes or 0) < 0:
            raise ValueError("partial upload limits must be positive")


class UploadSessions:
    """The upload sessions of one store, by write resource name, within ``limits``.

    Concurrency notes: one re-entrant lock guards the session table and the ledger of
    ``.part`` sizes (``_sizes``: every ``.part`` file and its length, as reserved by
    ``grow`` before the bytes are written). Reclaiming and taking over a session need
    its own lock too, taken without waiting: a session a stream holds is never touched.
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        busy_timeout: float = 30.0,
        limits: UploadLimits | None = None,
    ) -> None:
        self.store = store
        self.busy_timeout = busy_timeout
        self.limits = limits or UploadLimits()
        self._dir = store.root / "uploads"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self._sessions: dict[str, UploadSession] = {}
        self._sizes: dict[Path, int] = {}
        self._reclaimed_at = 0.0
        for part in self._dir.glob("*.part"):
            self._sizes[part] = part.stat().st_size
        self.reclaim()

    # -- the ledger of partial bytes ------------------------------------------------------------

    @property
    def partial_bytes(self) -> int:
        """Bytes held by partial uploads."""
        with self._lock:
            return sum(self._sizes.values())

    @property
    def partial_count(self) -> int:
        """Partial uploads held (``.part`` files)."""
        with self._lock:
            return len(self._sizes)

    def grow(self, path: Path, count: int) -> None:
        """Reserve ``count`` more bytes for the ``.part`` at ``path``; ``StoreFull`` if the
        limits refuse them even after reclaiming abandoned uploads."""
        for attempt in range(2):
            with self._lock:
                problem = self._over(path, count)
                if problem is None:
                    self._sizes[path] = self._sizes.get(path, 0) + count
                    return
            if attempt == 0:
                self.reclaim(force=True)
        raise StoreFull(problem)

    def _over(self, path: Path, count: int) -> str | None:
        limits = self.limits
        if path not in self._sizes and len(self._sizes) >= limits.max_count:
            return f"{len(self._sizes)} partial uploads are held (the limit); finish some first"
        total = sum(self._sizes.values())
        if limits.max_bytes is not None and total + count > limits.max_bytes:
            return (
                f"partial uploads hold {total} bytes; {count} more exceed the limit of "
                f"{limits.max_bytes}"
            )
        return None

    def forget(self, path: Path) -> None:
        """The ``.part`` at ``path`` is gone (committed or discarded)."""
        with self._lock:
            self._sizes.pop(path, None)

    def moved(self, old: Path, new: Path) -> None:
        with self._lock:
            self._sizes[new] = self._sizes.pop(old, 0)

    def resync(self, path: Path) -> None:
        """Count what the ``.part`` at ``path`` really holds (after a failed write)."""
        with self._lock:
            try:
                self._sizes[path] = path.stat().st_size
            except FileNotFoundError:
                self._sizes.pop(path, None)

    def reclaim(self, *, force: bool = True) -> None:
        """Remove the partial uploads nobody wrote for ``abandon_after`` seconds and no
        stream holds. Unless ``force``, at most once a minute."""
        now = time.time()
        with self._lock:
            if not force and now - self._reclaimed_at < min(60.0, self.limits.abandon_after):
                return
            self._reclaimed_at = now
            cutoff = now - self.limits.abandon_after
            by_path = {session.path: session for session in self._sessions.values()}
            for path in list(self._sizes):
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    self._sizes.pop(path, None)
                    continue
                session = by_path.get(path)
                if session is None:
                    log.info("removing abandoned upload %s", path.name)
                    path.unlink(missing_ok=True)
                    self._sizes.pop(path, None)
                elif session.lock.acquire(blocking=False):
                    try:
                        log.info("removing abandoned upload %s", session.name)
                        session.discard()
                        self._sessions.pop(session.name, None)
                    finally:
                        session.lock.release()

    # -- sessions ---------------------------------------------------------------------------------

    def _path(self, resource_name: str, digest: Digest, compressor: Compressor) -> Path:
        key = hashlib.sha256(resource_name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self._dir / f"{_prefix(digest, compressor)}.{key}.part"

    def _session(
        self, resource_name: str, digest: Digest, compressor: Compressor, *, create: bool
    ) -> UploadSession | None:
        """The session of ``resource_name``: the one in memory, or one made for its
        ``.part``, or one that takes over an unheld ``.part`` of the same blob; or, with
        ``create``, a new one. None otherwise."""
        check_supported(digest, compressor)
        self.reclaim(force=False)
        with self._lock:
            session = self._sessions.get(resource_name)
            if session is not None:
                return session
            if len(self._sessions) >= self.limits.max_count:
                self._prune()
            path = self._path(resource_name, digest, compressor)
            session = UploadSession(self, resource_name, path, digest, compressor)
            if not path.exists() and not self._take_over(session) and not create:
                return None
            self._sessions[resource_name] = session
            return session

    def _prune(self) -> None:
        """Forget the sessions that hold no bytes (no ``.part``) and no stream holds, so
        that names that never got a byte do not pile up in memory; lock held."""
        for name, session in list(self._sessions.items()):
            if not session.path.exists() and session.lock.acquire(blocking=False):
                try:
                    del self._sessions[name]
                finally:
                    session.lock.release()

    def _take_over(self, session: UploadSession) -> bool:
        """Give ``session`` the bytes of an unheld ``.part`` of its blob, if there is one
        (the one with the most bytes; of equals, the first by name); lock held."""
        by_path = {s.path: s for s in self._sessions.values()}
        candidates = []
        for path in self._dir.glob(f"{_prefix(session.digest, session.compressor)}.*"):
            with contextlib.suppress(FileNotFoundError):
                candidates.append((-path.stat().st_size, path.name, path))
        for _, _, path in sorted(candidates):
            other = by_path.get(path) or UploadSession(
                self, path.name, path, session.digest, session.compressor
            )
            if not other.lock.acquire(blocking=False):
                continue  # a stream is writing it
            try:
                if other.complete or not path.exists():
                    continue
                log.info("%s continues the abandoned upload %s", session.name, other.name)
                session.take_over(other)
                self._sessions.pop(other.name, None)
                return True
            finally:
                other.lock.release()
        return False

    @contextlib.contextmanager
    def open(
        self, resource_name: str, digest: Digest, compressor: Compressor
    ) -> Iterator[UploadSession]:
        """Hold the session for one Write stream. Raises ``UploadBusy`` after a timeout."""
        while True:
            session = self._session(resource_name, digest, compressor, create=True)
            assert session is not None
            if not session.lock.acquire(timeout=self.busy_timeout):
                raise UploadBusy(f"another stream is writing {resource_name}")
            with self._lock:
                if self._sessions.get(resource_name) is session:
                    break
            session.lock.release()  # dropped while this stream waited: take the new one
        try:
            yield session
        finally:
            session.detach()
            if session.complete:
                with self._lock:
                    if self._sessions.get(resource_name) is session:
                        del self._sessions[resource_name]
            session.lock.release()

    def status(
        self, resource_name: str, digest: Digest, compressor: Compressor = Compressor.IDENTITY
    ) -> tuple[int, bool]:
        """``(committed_size, complete)`` for QueryWriteStatus. Raises ``BlobNotFound``."""
        with self._lock:
            session = self._sessions.get(resource_name)
        if session is not None:
            return session.committed, session.complete
        if self.store.contains(digest):
            return digest.size, True
        session = self._session(resource_name, digest, compressor, create=False)
        if session is not None:
            return session.committed, session.complete
        raise BlobNotFound(f"no upload session {resource_name}")


def _prefix(digest: Digest, compressor: Compressor) -> str:
    """The start of the ``.part`` names of uploads of one blob with one compressor."""
    return f"{digest.function.name_lower}.{digest.hash}.{digest.size}.{compressor.name_lower}"
