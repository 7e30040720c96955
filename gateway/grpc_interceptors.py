"""What runs before every gRPC handler of the gateway (classifier, health, reflection).

* `AuthInterceptor` (only when API keys are configured): the one check of auth.py; a call without a
  valid key is answered UNAUTHENTICATED before its handler - or any of its work - starts.
* `MessageGuard` (always): a request message that is not valid protobuf for its method is answered
  INVALID_ARGUMENT. Left to itself, grpcio answers UNKNOWN with the text of a Python exception
  ("Unexpected <class 'google.protobuf.message.DecodeError'>...") - the wrong class of status for a
  client's mistake, and internals in a client-facing message. A message over `max_message_bytes`
  is answered RESOURCE_EXHAUSTED (reason TOO_LARGE) here too, rather than by gRPC's own limit
  (which the server sets at GRPC_HARD_LIMIT_FACTOR times that, as a last resort): so the refusal
  has a request id, a log line and a metric like any other.

Both answer with the request id and the error's details (google.rpc ErrorInfo/RetryInfo) in the
trailing metadata and write the same metrics sample and log line as any other call
(logs.finish_request).
"""

from __future__ import annotations

import inspect
import logging

import grpc

from gateway.auth import AUTHORIZATION, ApiKeyAuth
from gateway.errors import GatewayError, InvalidArgument, TooLarge
from gateway.logs import REQUEST_ID_HEADER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.status import error_trailers

GRPC_HARD_LIMIT_FACTOR = 4  # gRPC itself refuses messages this many times over max_message_bytes

log = logging.getLogger(__name__)

_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class UndecodableMessage(InvalidArgument):
    """A request message that does not parse as its method's message type."""

    def __init__(self, method: str):
        super().__init__(f"the request is not a valid protobuf message for {method}")


class MessageTooLarge(TooLarge):
    """A request message over the gateway's size limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the request message ({size} bytes) is over the limit of {limit} bytes",
                         metadata={"limit": str(limit)})


class _Refused:
    """What the tolerant deserializer hands over instead of a message it refuses (`error` says why)."""

    def __init__(self, error: GatewayError | None = None):
        self.error = error


def _rebuild(handler: grpc.RpcMethodHandler, behaviour, request_deserializer=None) -> grpc.RpcMethodHandler:
    """A handler of the same shape (streaming or not, both ways) running `behaviour`."""
    make = _MAKERS[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _behaviour(handler: grpc.RpcMethodHandler):
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _route(method: str) -> str:
    return method.rsplit("/", 1)[-1]


async def _answer_error(err: GatewayError, context: grpc.aio.ServicerContext, rid: str, method: str,
                        metrics: Metrics) -> None:
    """End the call with `err` (raises grpc's AbortError), after its metrics sample and log line."""
    finish_request(RequestRecord(rid, "grpc", _route(method), status=err.code_name), metrics)
    await context.abort(err.grpc_code, err.message, trailing_metadata=error_trailers(err, rid))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid API key before their handler runs."""

    def __init__(self, auth: ApiKeyAuth, metrics: Metrics):
        self._auth = auth
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            self._auth.authorize(method, metadata.get(AUTHORIZATION))
        except GatewayError as exc:
            refusal, rid = exc, request_id(metadata.get(REQUEST_ID_HEADER))

            async def refuse(request_or_iterator, context):
                await _answer_error(refusal, context, rid, method, self._metrics)

            return _rebuild(handler, refuse)
        return handler


class MessageGuard(grpc.aio.ServerInterceptor):
    """Turns request messages that do not parse, or are too large, into answers of our own."""

    def __init__(self, metrics: Metrics, max_bytes: int):
        self._metrics = metrics
        self._max_bytes = max_bytes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        given_id = dict(handler_call_details.invocation_metadata or ()).get(REQUEST_ID_HEADER)
        parse = handler.request_deserializer
        original = _behaviour(handler)
        streaming_response = handler.response_streaming
        metrics = self._metrics
        limit = self._max_bytes

        def tolerant(data: bytes):
            if len(data) > limit:
                return _Refused(MessageTooLarge(len(data), limit))
            try:
                return parse(data)
            except Exception:  # any parse failure is the client's malformed bytes, answered below
                return _Refused(UndecodableMessage(method))

        async def checked(requests):
            async for request in requests:
                if isinstance(request, _Refused):
                    raise request.error
                yield request

        async def unary_request(request, context):
            if isinstance(request, _Refused):
                log.info("refused a request message", extra={"fields": {"method": method, "reason": request.error.reason}})
                await _answer_error(request.error, context, request_id(given_id), method, metrics)
            return await _respond(original(request, context), context, streaming_response)

        async def streaming_request(request_iterator, context):
            try:
                return await _respond(original(checked(request_iterator), context), context, streaming_response)
            except (UndecodableMessage, MessageTooLarge) as err:  # handlers that do not translate errors themselves
                await _answer_error(err, context, request_id(given_id), method, metrics)

        behaviour = streaming_request if handler.request_streaming else unary_request
        return _rebuild(handler, behaviour, request_deserializer=tolerant)


async def _respond(result, context: grpc.aio.ServicerContext, streaming_response: bool):
    """Run a wrapped handler's result: a unary answer, an async generator of answers (written
    here), or a coroutine that writes its own answers."""
    if streaming_response and inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
        return None
    return await result
