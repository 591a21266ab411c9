"""Store and request errors to gRPC status codes: the server's one translation point."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NoReturn

import grpc

from casfs.compression import CompressionError
from casfs.digest import DigestError
from casfs.resource import ResourceNameError
from casfs.server.instances import UnknownInstance
from casfs.store.errors import (
    BlobNotFound,
    HashMismatch,
    OffsetMismatch,
    SizeMismatch,
    StoreError,
    StoreFull,
    Unsupported,
    UploadBusy,
)

log = logging.getLogger("casfs.server")


class RequestError(Exception):
    """A request the server refuses for a reason of its own, with the code to send."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (BlobNotFound, grpc.StatusCode.NOT_FOUND),
    (SizeMismatch, grpc.StatusCode.INVALID_ARGUMENT),
    (HashMismatch, grpc.StatusCode.DATA_LOSS),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OffsetMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (UploadBusy, grpc.StatusCode.ABORTED),
    (Unsupported, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownInstance, grpc.StatusCode.INVALID_ARGUMENT),
    (DigestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CompressionError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceNameError, grpc.StatusCode.INVALID_ARGUMENT),
]


# Status details travel in HTTP/2 trailers, which grpc bounds (8 KiB by default): a
# message that echoes a huge request would turn any refusal into RESOURCE_EXHAUSTED.
MAX_DETAILS = 1000


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message (at most ``MAX_DETAILS`` characters) a failed request
    should carry."""
    code = grpc.StatusCode.INTERNAL
    message = f"internal error: {type(error).__name__}: {error}"
    if isinstance(error, RequestError):
        code, message = error.code, str(error)
    else:
        for cls, known in _CODES:
            if isinstance(error, cls):
                code, message = known, str(error)
                break
    if len(message) > MAX_DETAILS:
        message = f"{message[: MAX_DETAILS - 30]}... ({len(message)} characters)"
    return code, message


def abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    """End the call with the status for ``error``."""
    code, message = status_of(error)
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


@contextlib.contextmanager
def grpc_errors(context: grpc.ServicerContext, what: str) -> Iterator[None]:
    """Abort the call with the right status for any error raised inside.

    Known errors are logged at debug level; anything unexpected is logged with its
    traceback and sent as INTERNAL. Code inside raises; it never calls ``context.abort``.
    """
    try:
        yield
    except (
        StoreError,
        RequestError,
        UnknownInstance,
        DigestError,
        ResourceNameError,
        CompressionError,
    ) as error:
        log.debug("%s: %s", what, error)
        abort(context, error)
    except Exception as error:
        if isinstance(error, grpc.RpcError):
            raise
        log.exception("%s failed", what)
        abort(context, error)
