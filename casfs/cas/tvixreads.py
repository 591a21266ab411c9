"""Ranged reads over tvix castore's Read, which has no offset: streams kept open where a
read stopped, so the next read of the blob goes on from there.

tvix's Read sends a whole blob (or a whole chunk that Stat listed) from its start. A read
of bytes ``[offset, end)`` therefore takes a parked stream of the same blob at or before
``offset`` if there is one (a sequential reader's next run continues the stream its last
run left), else opens a new one at 0; the bytes before ``offset`` stream past, handed to
``passing`` (the mount keeps them as blocks of its cache), and the stream is parked where
the read ended, unless that is the blob's end.

Checks: ``TvixClient.stream`` refuses more bytes than the digest's size and withholds the
blob's last piece until the whole blob has been hashed, so a read that reaches the end
gets ``DataLoss`` instead of the last bytes of a blob that does not match; a read that
ends before it gets bytes checked only for their length so far, as a ranged ByteStream
read does.

Concurrency notes: used from the mount's one trio thread; a stream is taken out of the
pool while a read uses it, so no two reads share one. Parked streams are bounded in
number (``MAX_PARKED``) and closed after ``IDLE`` seconds unused (the server ends idle
streams too; a stream it ended fails on its next read, which then opens a new one).
Cancelling a read closes its stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from casfs.cas.calls import Chunk
from casfs.cas.errors import CasError, DataLoss
from casfs.digest import Digest

log = logging.getLogger("casfs.cas")

MAX_PARKED = 4  # streams kept open between reads, for all blobs
IDLE = 20.0  # seconds a parked stream is kept unused

# Bytes that streamed past a read: (blob offset, bytes).
Passing = Callable[[int, Chunk], None]
Opener = Callable[[Digest], AsyncGenerator[Chunk, None]]


@dataclass(eq=False)
class _Cursor:
    """An open stream of a blob: ``offset`` is where ``leftover`` (bytes received, not
    handed on yet) begins."""

    stream: AsyncGenerator[Chunk, None]
    offset: int = 0
    leftover: Chunk = b""
    used: float = field(default_factory=trio.current_time)


class Cursors:
    """Streams of blobs, parked between reads. ``open`` starts a stream of a whole blob
    (``TvixClient.stream``)."""

    def __init__(self, open_stream: Opener) -> None:
        self._open = open_stream
        self._parked: OrderedDict[int, tuple[Digest, _Cursor]] = OrderedDict()
        self._active: dict[Digest, set[_Cursor]] = {}  # streams that reads are using
        self._waiting: dict[Digest, list[int]] = {}  # offsets of reads looking for a stream
        self._changed: dict[Digest, trio.Event] = {}  # set when a read of it lets go of one
        self.opened = 0  # streams opened, for tests and the log
        self.resumed = 0  # reads that went on with a parked stream

    async def _take(self, digest: Digest, offset: int, others: list[int]) -> _Cursor | None:
        """The parked stream of ``digest`` nearest before ``offset`` (out of the pool),
        unless a read of ``others`` (offsets of reads waiting too) would read from it
        before ``offset``: that read goes first. Streams idle too long are closed."""
        now = trio.current_time()
        best: tuple[int, _Cursor] | None = None
        for key, (parked, cursor) in list(self._parked.items()):
            if now - cursor.used > IDLE:
                del self._parked[key]
                await _close(cursor)
            elif (
                parked == digest
                and cursor.offset <= offset
                and (best is None or cursor.offset > best[1].offset)
            ):
                best = (key, cursor)
        if best is None or any(best[1].offset <= other < offset for other in others):
            return None
        del self._parked[best[0]]
        return best[1]

    async def _park(self, digest: Digest, cursor: _Cursor) -> None:
        cursor.used = trio.current_time()
        self._parked[id(cursor)] = (digest, cursor)
        while len(self._parked) > MAX_PARKED:
            _, (_, oldest) = self._parked.popitem(last=False)
            await _close(oldest)

    async def aclose(self) -> None:
        """Close every parked stream."""
        while self._parked:
            _, (_, cursor) = self._parked.popitem()
            await _close(cursor)

    async def read(
        self, digest: Digest, offset: int, end: int, passing: Passing | None = None
    ) -> AsyncIterator[Chunk]:
        """Yield bytes ``[offset, end)`` of the blob (``end`` at most its size), going on
        with a parked stream where one is at or before ``offset``.

        A transient failure of the stream (the server ended a parked stream while it was
        idle, its deadline passed, the connection broke) is met once per read with a new
        stream from the start, which goes on where the failed one stopped. Any other
        failure raises its ``CasError``: ``DataLoss`` if the stream ends short or the blob
        does not match. Cancelled, the stream is closed."""
        cursor = await self._cursor(digest, offset)
        self._use(digest, cursor)
        replaced = False
        parked = False
        start = offset  # where the bytes not yielded yet begin
        try:
            while True:
                try:
                    async for piece in _pieces(cursor, start, end, passing):
                        yield piece
                    break
                except CasError as error:
                    if replaced or not error.transient:
                        raise
                    log.debug("%s: a stream failed at %d (%s); a new one", digest, start, error)
                    replaced = True
                    start = max(offset, cursor.offset)
                    failed, cursor = cursor, self._new(digest)
                    self._use(digest, cursor)
                    self._unuse(digest, failed)
                    await _close(failed)
            if cursor.offset < digest.size:
                self._unuse(digest, cursor)
                await self._park(digest, cursor)
                parked = True
        finally:
            self._unuse(digest, cursor)
            if not parked:
                await _close(cursor)
            self._notify(digest)

    async def _cursor(self, digest: Digest, offset: int) -> _Cursor:
        """A stream for a read at ``offset``: a parked one at or before it (the read
        nearest after it goes first, when several wait); else, while a read is using a
        stream of the blob that has not passed ``offset`` yet, that one once the read lets
        go of it (one stream serves readers one after the other instead of a second stream
        from the start); else a new one."""
        waiting = self._waiting.setdefault(digest, [])
        waiting.append(offset)
        try:
            while True:
                others = list(waiting)
                others.remove(offset)
                cursor = await self._take(digest, offset, others)
                if cursor is not None:
                    self.resumed += 1
                    return cursor
                parked = any(d == digest and c.offset <= offset for d, c in self._parked.values())
                active = self._active.get(digest, ())
                if not parked and not any(c.offset <= offset for c in active):
                    return self._new(digest)
                changed = self._changed.setdefault(digest, trio.Event())
                await changed.wait()
        finally:
            waiting.remove(offset)
            if not waiting:
                del self._waiting[digest]

    def _use(self, digest: Digest, cursor: _Cursor) -> None:
        self._active.setdefault(digest, set()).add(cursor)

    def _unuse(self, digest: Digest, cursor: _Cursor) -> None:
        active = self._active.get(digest)
        if active is not None:
            active.discard(cursor)
            if not active:
                del self._active[digest]

    def _notify(self, digest: Digest) -> None:
        """A read let go of a stream of ``digest``: the reads waiting for one look again."""
        changed = self._changed.pop(digest, None)
        if changed is not None:
            changed.set()

    def _new(self, digest: Digest) -> _Cursor:
        self.opened += 1
        return _Cursor(self._open(digest))


async def _pieces(
    cursor: _Cursor, offset: int, end: int, passing: Passing | None
) -> AsyncIterator[Chunk]:
    """Bytes ``[offset, end)`` from the cursor, moving it on; what lies before ``offset``
    goes to ``passing``."""
    while cursor.offset < end:
        pending = cursor.leftover
        if not pending:
            try:
                pending = await cursor.stream.__anext__()
            except StopAsyncIteration:
                raise DataLoss(f"the stream ended at byte {cursor.offset}, before {end}") from None
            if not pending:
                continue
        position = cursor.offset
        if position < offset:  # before the read: streams past
            skip = min(len(pending), offset - position)
            if passing is not None:
                passing(position, memoryview(pending)[:skip])
            cursor.leftover = memoryview(pending)[skip:]
            cursor.offset = position + skip
            continue
        take = min(len(pending), end - position)
        piece = pending if take == len(pending) else memoryview(pending)[:take]
        cursor.leftover = b"" if take == len(pending) else memoryview(pending)[take:]
        cursor.offset = position + take
        yield piece


async def _close(cursor: _Cursor) -> None:
    with trio.CancelScope(shield=True):
        try:
            await cursor.stream.aclose()
        except CasError as error:  # it failed as it closed: nothing is waiting for it
            log.debug("closing a tvix stream: %s", error)
