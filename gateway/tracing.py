"""Optional OpenTelemetry tracing: spans for every gRPC and REST request, and the trace context
forwarded to the model server on each Predict (W3C `traceparent` in the call's metadata).

Off by default (`tracing: off`), and then neither the OpenTelemetry SDK nor an instrumentation is
imported (FastAPI itself loads the small `opentelemetry-api`). `console` writes
finished spans as JSON to stderr (for a look, and for the tests); `otlp` exports them with the
OTLP/gRPC exporter, configured by the standard `OTEL_EXPORTER_OTLP_*` environment variables
(endpoint default `localhost:4317`).

`start_tracing()` must run before the gRPC server and the backend channel are created: the gRPC
instrumentation works by wrapping `grpc.aio.server` and `grpc.aio.*_channel`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from gateway.settings import Settings


class Tracing:
    """What start_tracing() switched on; `instrument_app` and `shutdown` are no-ops when off."""

    def __init__(self, instrument_app: Callable[["FastAPI"], None] = lambda app: None,
                 shutdown: Callable[[], None] = lambda: None):
        self.instrument_app = instrument_app
        self.shutdown = shutdown


def start_tracing(settings: "Settings") -> Tracing:
    if settings.tracing == "off":
        return Tracing()
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.tracing_service_name}))
    if settings.tracing == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()

    def instrument_app(app: "FastAPI") -> None:
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                           excluded_urls="healthz,readyz,metrics")

    return Tracing(instrument_app, provider.shutdown)
