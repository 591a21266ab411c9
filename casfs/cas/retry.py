"""Retries with capped exponential backoff and full jitter, for transient CAS errors.

Only errors whose class says ``transient`` (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
CANCELLED by the server) are retried; everything else is final at once. Cancellation of
the calling trio task is never retried: ``trio.Cancelled`` is not a ``CasError`` and goes
straight through, including out of the backoff sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from casfs.cas.errors import CasError
from casfs.config import RetryPolicy

T = TypeVar("T")
log = logging.getLogger("casfs.cas")


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    what: str,
) -> T:
    """Await ``call()`` until it succeeds, fails for good, or the attempts run out.

    Each attempt starts from scratch unless ``call`` keeps its own progress (a resumable
    write asks the server how much it has at the start of every attempt after the first).
    The last transient error is raised when the attempts run out.
    """
    delays = policy.delays()
    while True:
        try:
            return await call()
        except CasError as error:
            if not error.transient:
                raise
            delay = next(delays, None)
            if delay is None:
                log.warning("%s: giving up after %d attempts: %s", what, policy.attempts, error)
                raise
            log.info("%s: %s; retrying in %.2fs", what, error, delay)
            await trio.sleep(delay)
