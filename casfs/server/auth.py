"""Bearer-token authentication for the embedded server, as a gRPC interceptor.

Every call must carry ``authorization: Bearer <token>`` with one of the configured tokens;
tokens are compared in constant time and never logged. No token configured: no check. A
token marked ``read-only`` may read (and ask what exists) but not store anything.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

READ_ONLY = "read-only"
# The calls that store something; a read-only token is refused them.
WRITE_METHODS = frozenset(
    {
        "/google.bytestream.ByteStream/Write",
        "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
        "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
        "/build.bazel.remote.asset.v1.Push/PushBlob",
        "/build.bazel.remote.asset.v1.Push/PushDirectory",
        "/tvix.castore.v1.BlobService/Put",
        "/tvix.castore.v1.DirectoryService/Put",
    }
)


@dataclass(frozen=True, slots=True)
class Token:
    """One accepted bearer token."""

    secret: bytes
    read_only: bool = False

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Token(<{len(self.secret)} bytes>, read_only={self.read_only})"


def load_tokens(path: Path) -> list[Token]:
    """The tokens in a file, one per line: ``TOKEN`` or ``TOKEN read-only``; blank lines and
    ``#`` comments are skipped. Raises ``ValueError`` for an empty file or a bad line (the
    message names the line number, never the token)."""
    tokens = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2 or (len(fields) == 2 and fields[1] != READ_ONLY):
            raise ValueError(f"{path}:{number}: expected 'TOKEN' or 'TOKEN {READ_ONLY}'")
        tokens.append(Token(fields[0].encode(), read_only=len(fields) == 2))
    if not tokens:
        raise ValueError(f"token file {path} holds no token")
    return tokens


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class TokenAuth(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuse calls without a valid bearer token: UNAUTHENTICATED if none is sent,
    PERMISSION_DENIED if a wrong one is, or a read-only one for a call that stores."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._tokens = list(tokens)

    def _match(self, header: str) -> Token | None:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        candidate = presented.strip().encode()
        # Compare against every token so the time taken does not say which one matched.
        found = None
        for token in self._tokens:
            if hmac.compare_digest(candidate, token.secret):
                found = token
        return found

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        if header is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        token = self._match(header) if isinstance(header, str) else None
        if token is None:
            return _deny(grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid")
        if token.read_only and handler_call_details.method in WRITE_METHODS:
            return _deny(grpc.StatusCode.PERMISSION_DENIED, "this token may only read")
        return continuation(handler_call_details)
