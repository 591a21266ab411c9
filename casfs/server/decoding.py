"""Requests that do not decode: INVALID_ARGUMENT and one log line, as a server interceptor.

grpcio answers a request message its deserializer cannot parse with INTERNAL and logs a
full traceback for each one, so a client sending garbage fills the log and looks like a
server bug. ``DecodeGuard`` wraps each handler's deserializer so that a message that does
not parse becomes an ``Undecodable`` marker instead of an exception: a unary call that gets
one is refused at once, a request stream when it reaches one (what the stream stored
before it stays, as for any stream that fails). Nothing else about the call changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from casfs.server.grpc_errors import RequestError

log = logging.getLogger("casfs.server")


class Undecodable:
    """Stands for a request message that did not parse."""

    def __init__(self, method: str, error: Exception) -> None:
        self.message = f"{method}: the request message does not decode ({type(error).__name__})"


def _refuse(request: Undecodable) -> RequestError:
    log.warning("%s", request.message)  # one line, no traceback: the fault is the client's
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    """A request stream that raises ``RequestError`` at an undecodable message (the
    servicer's ``grpc_errors`` turns it into INVALID_ARGUMENT)."""
    for request in requests:
        if isinstance(request, Undecodable):
            raise _refuse(request)
        yield request


class DecodeGuard(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Undecodable requests are INVALID_ARGUMENT, logged in one line."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as error:
                return Undecodable(method, error)

        if handler.request_streaming:
            behavior: Callable[..., Any] | None = handler.stream_stream or handler.stream_unary
            assert behavior is not None

            def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behavior(_checked(requests), context)

            wrap = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return wrap(
                streamed,
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )

        single: Callable[..., Any] | None = handler.unary_stream or handler.unary_unary
        assert single is not None

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                error = _refuse(request)
                context.abort(error.code, str(error))
            return single(request, context)

        wrap = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return wrap(
            unary,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
