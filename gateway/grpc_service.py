"""The gRPC transport: `classifier.v1.Classifier` over the core, plus health and reflection.

A thin adapter: it turns messages into core calls and results back into messages (converters),
errors into status codes (errors.TABLE), and the client's deadline into the core's deadline. Every
call gets a request id (the client's `x-request-id` metadata, or a new one) sent back in the
trailing metadata, with the call's status; ClassifyStream also sends it first, in the initial
metadata, so its client has it before the stream ends.

`grpc.health.v1.Health` answers NOT_SERVING for "" and "classifier.v1.Classifier" until the
default model is AVAILABLE at the model server, and again while draining. Server reflection
lets `grpcurl -plaintext HOST:PORT list` work without the proto files.

Before any handler, grpc_interceptors.py checks the API key (when keys are configured) and
answers undecodable request messages with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc

from gateway import converters
from gateway.auth import AUTHORIZATION, ApiKeyAuth
from gateway.callers import CLIENT_ID_HEADER, grpc_peer_address, identify
from gateway.core import GatewayCore
from gateway.types import ImageRequest
from gateway.errors import GatewayError, as_gateway_error
from gateway.grpc_interceptors import GRPC_HARD_LIMIT_FACTOR, AuthInterceptor, MessageGuard
from gateway.logs import REQUEST_ID_HEADER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.routing import CANARY_KEY_HEADER, route_key
from gateway.settings import Settings
from gateway.status import error_trailers
from gateway.tls import grpc_server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, service: GatewayCore, metrics: Metrics, auth: ApiKeyAuth, stream_window: int):
        self._service = service
        self._metrics = metrics
        self._auth = auth
        self._stream_window = stream_window

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        async with self._call(context, "Classify") as record:
            record.model = self._service.resolve_model(request.model)
            record.images = 1
            deadline = self._service.deadline(context.time_remaining())
            result = await self._service.classify(self._input(request, record), deadline)
            record.version = result.version
            record.add_stages(result.stages)
            return converters.classification_to_proto(result, 0, request.id[:128])

    async def ClassifyBatch(self, request: pb.ClassifyBatchRequest, context) -> pb.ClassifyBatchResponse:
        """One answer per image; a failed image answers with its own error, the others go on."""
        async with self._call(context, "ClassifyBatch") as record:
            inputs = [self._input(r, record) for r in request.requests]
            record.images = len(inputs)
            deadline = self._service.deadline(context.time_remaining())
            outcomes = await self._service.classify_many(inputs, deadline)
            responses = []
            for index, (item, outcome) in enumerate(zip(inputs, outcomes)):
                self._note(record, outcome)
                responses.append(converters.outcome_to_proto(outcome, index, item.id, record.request_id))
            return pb.ClassifyBatchResponse(responses=responses)

    async def ClassifyStream(self, request_iterator, context) -> AsyncIterator[pb.ClassifyResponse]:
        """Answers in request order, each as soon as it and those before it are ready: a reader task
        takes messages while up to `stream_window` images are in flight (and batch), so a client
        that sends one image and waits gets its answer at once. A failed image answers with its own
        error and the stream goes on; a message that does not parse (MessageGuard raises that from
        the request iterator) ends the stream with its error after the answers before it."""
        async with self._call(context, "ClassifyStream", early_id=True) as record:
            pending: asyncio.Queue[tuple[int, str, asyncio.Task] | None] = asyncio.Queue()
            window = asyncio.Semaphore(self._stream_window)
            tasks: set[asyncio.Task] = set()
            broken: list[GatewayError] = []

            async def read() -> None:
                index = 0
                try:
                    async for message in request_iterator:
                        await window.acquire()
                        item = self._input(message, record)
                        task = asyncio.create_task(
                            self._service.attempt(item, self._service.deadline(context.time_remaining())))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        pending.put_nowait((index, item.id, task))
                        index += 1
                except GatewayError as exc:
                    broken.append(exc.with_message(f"stream message {index}: {exc.message}"))
                finally:
                    pending.put_nowait(None)

            reader = asyncio.create_task(read())
            try:
                while (entry := await pending.get()) is not None:
                    index, id, task = entry
                    outcome = await task
                    window.release()
                    record.images += 1
                    self._note(record, outcome)
                    yield converters.outcome_to_proto(outcome, index, id, record.request_id)
                await reader
                if broken:
                    raise broken[0]
            finally:  # the stream ended early (an error, or the client went away)
                reader.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        async with self._call(context, "ListModels"):
            models = await self._service.list_models()
            return pb.ListModelsResponse(models=[converters.model_to_proto(m) for m in models])

    # -- shared by every RPC --------------------------------------------------------------------

    @staticmethod
    def _input(request: pb.ClassifyRequest, record: RequestRecord) -> ImageRequest:
        return converters.input_from_proto(request, record.route_key, record.caller)

    @staticmethod
    def _note(record: RequestRecord, outcome) -> None:
        """Add an image's outcome to the call's record (model, version, stages of the answered ones)."""
        if isinstance(outcome, GatewayError):
            return
        record.model, record.version = outcome.model, outcome.version
        record.add_stages(outcome.stages)

    @contextlib.asynccontextmanager
    async def _call(self, context: grpc.aio.ServicerContext, method: str, early_id: bool = False):
        """Request id, caller, in-flight gauge, error translation, one metrics sample + log line.

        The request id goes back in the trailing metadata, which travels with the status at no cost;
        `early_id` also sends it at once as initial metadata, a send of its own that costs an event
        loop round (about a tenth of a small image's CPU in the gateway): worth it for a stream only."""
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get(AUTHORIZATION)
        record = RequestRecord(request_id(metadata.get(REQUEST_ID_HEADER)), "grpc", method,
                               route_key=route_key(metadata.get(CANARY_KEY_HEADER), authorization),
                               caller=identify(self._auth.caller(authorization), metadata.get(CLIENT_ID_HEADER),
                                               grpc_peer_address(context.peer())))
        id_metadata = ((REQUEST_ID_HEADER, record.request_id),)
        context.set_trailing_metadata(id_metadata)
        if early_id:
            await context.send_initial_metadata(id_metadata)
        self._metrics.inflight_of("grpc").inc()
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
            await context.abort(err.grpc_code, err.message, trailing_metadata=error_trailers(err, record.request_id))
        finally:
            self._metrics.inflight_of("grpc").dec()
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


async def create_grpc_server(settings: Settings, service: GatewayCore, registry: ModelRegistry,
                             metrics: Metrics, auth: ApiKeyAuth) -> tuple[grpc.aio.Server, int, DrainingHealthServicer]:
    """The gRPC server, bound (not started): returns it with its port and the health servicer.

    TLS (and mutual TLS) when the settings name a certificate; TlsConfigError when they name a bad one.
    """
    # The first interceptor runs first: a call without a key is refused before its message is looked at.
    interceptors = ([AuthInterceptor(auth, metrics)] if auth.enabled else []) + [
        MessageGuard(metrics, settings.max_message_bytes)]
    server = grpc.aio.server(interceptors=interceptors, options=[
        # The gateway's own MessageGuard answers messages over max_message_bytes; gRPC's limit is the backstop.
        ("grpc.max_receive_message_length", settings.max_message_bytes * GRPC_HARD_LIMIT_FACTOR),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),  # workers share the port; else a clash is an error
    ])
    pb_grpc.add_ClassifierServicer_to_server(
        ClassifierServicer(service, metrics, auth, stream_window=settings.max_batch_size), server)

    health_servicer = DrainingHealthServicer()
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def on_readiness(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await health_servicer.set(name, status)

    registry.add_listener(on_readiness)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    address = _address(settings.host, settings.grpc_port)
    credentials = grpc_server_credentials(settings)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    return server, port, health_servicer


def _enable_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Server reflection as `grpc.reflection.v1alpha` (what grpcio-reflection ships) and as
    `grpc.reflection.v1` (what newer grpcurl, Postman and grpc-js clients ask first): the two
    services have the same messages on the wire, so one servicer answers both."""
    servicer = reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
