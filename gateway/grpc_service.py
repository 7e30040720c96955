"""The gRPC transport: `classifier.v1.Classifier` over the core, plus health and reflection.

A thin adapter: it turns messages into core calls and results back into messages (converters),
errors into status codes (errors.TABLE), and the client's deadline into the core's deadline. Every
call gets a request id (the client's `x-request-id` metadata, or a new one) sent back in the
initial metadata and, on errors, the trailing metadata.

`grpc.health.v1.Health` answers NOT_SERVING for "" and "classifier.v1.Classifier" until the
default model is AVAILABLE at the model server, and again while draining. Server reflection
lets `grpcurl -plaintext HOST:PORT list` work without the proto files.

Before any handler, grpc_interceptors.py checks the API key (when keys are configured) and
answers undecodable request messages with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import gateway.generated  # noqa: F401  (puts the generated tree on sys.path)
from classifier.v1 import classifier_pb2 as pb
from classifier.v1 import classifier_pb2_grpc as pb_grpc

from gateway import converters
from gateway.auth import AUTHORIZATION, ApiKeyAuth
from gateway.core import ClassifierService, ClassifyInput
from gateway.errors import GatewayError, as_gateway_error
from gateway.grpc_interceptors import AuthInterceptor, MessageGuard
from gateway.logs import REQUEST_ID_HEADER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.routing import CANARY_KEY_HEADER, route_key
from gateway.settings import Settings
from gateway.tls import grpc_server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, service: ClassifierService, metrics: Metrics, stream_window: int):
        self._service = service
        self._metrics = metrics
        self._stream_window = stream_window

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        async with self._call(context, "Classify") as record:
            record.model = self._service.resolve_model(request.model)
            record.images = 1
            deadline = self._service.deadline(context.time_remaining())
            result = await self._service.classify(converters.input_from_proto(request, record.route_key), deadline)
            record.version = result.version
            record.add_stages(result.stages)
            return converters.classification_to_proto(result)

    async def ClassifyBatch(self, request: pb.ClassifyBatchRequest, context) -> pb.ClassifyBatchResponse:
        async with self._call(context, "ClassifyBatch") as record:
            inputs = [converters.input_from_proto(r, record.route_key) for r in request.requests]
            record.images = len(inputs)
            deadline = self._service.deadline(context.time_remaining())
            results = await self._service.classify_many(inputs, deadline)
            if results:
                record.model, record.version = results[0].model, results[0].version
            for result in results:
                record.add_stages(result.stages)
            return pb.ClassifyBatchResponse(responses=[converters.classification_to_proto(r) for r in results])

    async def ClassifyStream(self, request_iterator, context) -> AsyncIterator[pb.ClassifyResponse]:
        """Answers in request order; up to `stream_window` images are in flight (and batch) at once.

        A bad message ends the stream with its error after the answers to the messages before it,
        whether its image is bad or the message itself did not parse (MessageGuard raises that
        from the request iterator)."""
        async with self._call(context, "ClassifyStream") as record:
            pending: collections.deque[asyncio.Task] = collections.deque()
            requests = aiter(request_iterator)
            broken: GatewayError | None = None
            try:
                index = 0
                while True:
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        break
                    except GatewayError as exc:
                        broken = GatewayError(f"stream message {index}: {exc.message}", exc.kind)
                        break
                    pending.append(asyncio.create_task(
                        self._stream_item(index, converters.input_from_proto(request, record.route_key), context)))
                    index += 1
                    while pending and (len(pending) >= self._stream_window or pending[0].done()):
                        yield self._stream_answer(record, await pending.popleft())
                while pending:
                    yield self._stream_answer(record, await pending.popleft())
                if broken is not None:
                    raise broken
            finally:  # the stream ended early (an error, or the client went away)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        async with self._call(context, "ListModels"):
            models = await self._service.list_models()
            return pb.ListModelsResponse(models=[converters.model_to_proto(m) for m in models])

    # -- shared by every RPC --------------------------------------------------------------------

    async def _stream_item(self, index: int, item: ClassifyInput, context: grpc.aio.ServicerContext):
        """One image of a stream: its own deadline, cut short by what is left of the stream's."""
        try:
            return await self._service.classify(item, self._service.deadline(context.time_remaining()))
        except GatewayError as exc:
            raise GatewayError(f"stream message {index}: {exc.message}", exc.kind) from None

    def _stream_answer(self, record: RequestRecord, result) -> pb.ClassifyResponse:
        record.images += 1
        record.model, record.version = result.model, result.version
        record.add_stages(result.stages)
        return converters.classification_to_proto(result)

    @contextlib.asynccontextmanager
    async def _call(self, context: grpc.aio.ServicerContext, method: str):
        """Request id, in-flight gauge, error translation, one metrics sample + log line."""
        metadata = dict(context.invocation_metadata() or ())
        record = RequestRecord(request_id(metadata.get(REQUEST_ID_HEADER)), "grpc", method,
                               route_key=route_key(metadata.get(CANARY_KEY_HEADER), metadata.get(AUTHORIZATION)))
        id_metadata = ((REQUEST_ID_HEADER, record.request_id),)
        await context.send_initial_metadata(id_metadata)
        self._metrics.inflight.labels("grpc").inc()
        try:
            yield record
        except asyncio.CancelledError:
            record.status = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as exc:
            err = as_gateway_error(exc)
            if err is not exc:
                log.exception("unexpected error in %s", method, extra={"fields": {"request_id": record.request_id}})
            record.status = err.code_name
            await context.abort(err.grpc_code, err.message, trailing_metadata=id_metadata)
        finally:
            self._metrics.inflight.labels("grpc").dec()
            finish_request(record, self._metrics)


class _Drained(Exception):
    """A Watch stream has told its client NOT_SERVING during shutdown: time to end it."""


class _EndWhenDrained:
    """A Watch call's context whose write() ends the stream once it has sent the drain's NOT_SERVING."""

    def __init__(self, context: grpc.aio.ServicerContext, servicer: DrainingHealthServicer):
        self._context = context
        self._servicer = servicer

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        if self._servicer.draining and message.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            raise _Drained


class DrainingHealthServicer(health.aio.HealthServicer):
    """grpc's own health servicer, except that Watch streams end (status OK) once they have sent
    NOT_SERVING at shutdown: an open Watch would otherwise hold the server's stop for the whole
    grace period, though its client has already been told everything there is to know."""

    draining = False

    async def enter_graceful_shutdown(self) -> None:
        self.draining = True
        await super().enter_graceful_shutdown()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        with contextlib.suppress(_Drained):
            await super().Watch(request, _EndWhenDrained(context, self))


async def create_grpc_server(settings: Settings, service: ClassifierService, registry: ModelRegistry,
                             metrics: Metrics, auth: ApiKeyAuth) -> tuple[grpc.aio.Server, int, DrainingHealthServicer]:
    """The gRPC server, bound (not started): returns it with its port and the health servicer.

    TLS (and mutual TLS) when the settings name a certificate; TlsConfigError when they name a bad one.
    """
    # The first interceptor runs first: a call without a key is refused before its message is looked at.
    interceptors = ([AuthInterceptor(auth, metrics)] if auth.enabled else []) + [MessageGuard(metrics)]
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_ClassifierServicer_to_server(
        ClassifierServicer(service, metrics, stream_window=settings.max_batch_size), server)

    health_servicer = DrainingHealthServicer()
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def on_readiness(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await health_servicer.set(name, status)

    registry.add_listener(on_readiness)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    address = _address(settings.host, settings.grpc_port)
    credentials = grpc_server_credentials(settings)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    return server, port, health_servicer


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
