"""casfs errors, and the one place gRPC status codes become them (the first border).

Everything above ``cas/`` sees only these classes; ``fs/`` turns them into errno values.
Each class carries the errno a filesystem should report, so that the second border is a
lookup, not a second table.
"""

from __future__ import annotations

import errno

import grpc


class CasError(Exception):
    """A CAS operation failed. ``errno`` is what a filesystem user should see."""

    errno: int = errno.EIO
    transient: bool = False

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotFound(CasError):
    """The blob (or upload session, or action result) does not exist."""

    errno = errno.ENOENT


class InvalidArgument(CasError):
    """The server refused the request as malformed (bad name, offset, digest mismatch)."""

    errno = errno.EINVAL


class OutOfRange(CasError):
    """An offset lies beyond the end of the blob."""

    errno = errno.EINVAL


class FailedPrecondition(CasError):
    """The server's state does not allow the request (for a write: a non-sequential offset)."""


class ResourceExhausted(CasError):
    """The server is out of space or over a quota."""

    errno = errno.ENOSPC


class DataLoss(CasError):
    """The data does not match its digest."""


class ContentChanged(DataLoss):
    """A file being uploaded no longer has the digest it was hashed to (nothing sent)."""


class PermissionDenied(CasError):
    """The credentials were refused or are missing."""

    errno = errno.EACCES


class Unimplemented(CasError):
    """The server does not offer this call or feature."""

    errno = errno.ENOTSUP


class Unavailable(CasError):
    """The server could not be reached or did not answer in time; worth retrying."""

    transient = True


class Aborted(CasError):
    """The server gave up on the call because of a conflict; worth retrying."""

    transient = True


class Cancelled(CasError):
    """The call was cancelled by the server or the channel."""

    transient = True


_BY_CODE: dict[grpc.StatusCode, type[CasError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError, what: str) -> CasError:
    """Translate a failed gRPC call into a casfs error.

    ``what`` names the operation for the message, e.g. ``"Read main/blobs/ab.../12"``.
    Codes without a class of their own (INTERNAL, UNKNOWN, ALREADY_EXISTS) become a
    plain, non-transient ``CasError`` (EIO).
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    cls = _BY_CODE.get(code, CasError)
    return cls(f"{what}: {code.name}: {details or 'no details'}", code=code)


def from_status(code: int, message: str, what: str) -> CasError | None:
    """Translate a ``google.rpc.Status`` carried inside a batch response; None for OK."""
    if code == 0:
        return None
    status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(status, CasError)
    return cls(f"{what}: {status.name}: {message or 'no details'}", code=status)
