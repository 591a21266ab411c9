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


class RetryBudget:
    """The attempts left to one call, for a caller that loops itself: a stream that resumes
    where it broke calls ``back_off`` after each failure and ``reset`` after progress
    (progress earns a fresh budget)."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self._policy = policy
        self._what = what
        self._delays = policy.delays()

    def reset(self) -> None:
        self._delays = self._policy.delays()

    async def back_off(self, error: CasError, where: str = "", again: str = "retrying") -> None:
        """Sleep before the next attempt after ``error``; raise ``error`` if it is final or
        the attempts have run out. ``where`` says how far the call got and ``again`` what
        the next attempt does (for the log)."""
        if not error.transient:
            raise error
        delay = next(self._delays, None)
        if delay is None:
            log.warning(
                "%s: giving up after %d attempts: %s", self._what, self._policy.attempts, error
            )
            raise error
        log.info("%s: %s%s; %s in %.2fs", self._what, error, where, again, delay)
        await trio.sleep(delay)


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
    budget = RetryBudget(policy, what)
    while True:
        try:
            return await call()
        except CasError as error:
            await budget.back_off(error)
