"""Bearer-token authentication for the embedded server, as a gRPC interceptor.

Every call must carry ``authorization: Bearer <token>`` with one of the configured tokens;
tokens are compared in constant time and never logged. No token configured: no check.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc


def load_tokens(path: Path) -> list[bytes]:
    """The tokens in a file, one per line; blank lines and ``#`` comments are skipped."""
    tokens = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(line.encode())
    if not tokens:
        raise ValueError(f"token file {path} holds no token")
    return tokens


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class TokenAuth(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuse calls without a valid bearer token: UNAUTHENTICATED if none is sent,
    PERMISSION_DENIED if a wrong one is."""

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self._tokens = list(tokens)

    def _allowed(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        candidate = token.strip().encode()
        # Compare against every token so the time taken does not say which one matched.
        return sum(hmac.compare_digest(candidate, t) for t in self._tokens) > 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        if header is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        if not isinstance(header, str) or not self._allowed(header):
            return _deny(grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid")
        return continuation(handler_call_details)
