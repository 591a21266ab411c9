"""The second border: whatever a FUSE handler raises becomes the errno the program sees.

``fuse_errors`` wraps every handler of ``operations.CasOperations``: a ``FUSEError`` or a
node's ``NodeError`` passes as its errno (a node's refusal is an answer, not logged), a
``CasError`` or ``UploadError`` becomes its errno and an ``OSError`` (the spool disk) its
own, each logged in one line; anything else becomes EIO, logged with its traceback.
Nothing else may escape into pyfuse3, which would end the mount. Each call and each error
(by errno) is counted in the handler's ``stats`` (``FuseStats``). Cancellation passes
through untouched (``trio.Cancelled`` is a ``BaseException``).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import pyfuse3

from casfs.cas.errors import CasError
from casfs.fs.nodes import NodeError
from casfs.fs.stats import FuseStats
from casfs.fs.uploads import UploadError

log = logging.getLogger("casfs.fs")
P = ParamSpec("P")
R = TypeVar("R")


class Counted(Protocol):
    """What a wrapped handler's object has: the counters of its calls and errors."""

    stats: FuseStats


S = TypeVar("S", bound=Counted)


def fuse_errors(
    fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Translate every error a handler raises into a ``FUSEError``; count calls and errors."""
    op = fn.__name__

    @functools.wraps(fn)
    async def handler(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        stats = self.stats
        stats.ops[op] += 1
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError as error:
            stats.errors[(op, error.errno)] += 1
            raise
        except NodeError as error:  # an answer, not a failure: not logged
            code = error.errno
        except (CasError, UploadError) as error:
            log.warning("%s: %s", op, error)
            code = error.errno
        except OSError as error:
            log.warning("%s: %s", op, error)
            code = error.errno or errno.EIO
        except Exception:
            log.exception("%s failed unexpectedly", op)
            code = errno.EIO
        stats.errors[(op, code)] += 1
        raise pyfuse3.FUSEError(code) from None

    return handler
