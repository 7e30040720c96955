"""Prometheus metrics of the gateway, served at GET /metrics (issue 9's list).

One `Metrics` object per process, holding its own registry (so tests and embedded uses never
collide in the client library's global one). Label values are bounded: model labels are only
names the gateway fronts ("" for requests without one, or naming an unknown one), routes are
templates, statuses are gRPC code names (gRPC) or HTTP status codes (REST).
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("decode", "queue_wait", "predict", "decide")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)   # process_resident_memory_bytes & co.
        PlatformCollector(registry=r)

        self.requests = Counter(
            "gateway_requests", "Requests answered, by transport, route or RPC, model and status "
            "(gRPC code name)", ["transport", "route", "model", "status"], registry=r)
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Time to answer a request",
            ["transport", "route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("gateway_inflight_requests", "Requests being handled now",
                              ["transport"], registry=r)
        self.stage_seconds = Histogram(
            "gateway_stage_duration_seconds", "Time per image in each stage: decode, queue_wait "
            "(waiting for a batch), predict (the model server call), decide (thresholds)",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("gateway_batch_size", "Images per Predict call to the model server",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("gateway_queue_depth", "Images waiting for a batch", ["model"], registry=r)
        self.decisions = Counter("gateway_decisions", "Decisions by label (including the uncertain one)",
                                 ["model", "label", "confident"], registry=r)
        self.backend_requests = Counter(
            "gateway_backend_requests", "Calls to the model server by method and gRPC code (CANCELLED: "
            "every caller gave up - deadline, client gone, shutdown - and the call was cancelled)",
            ["method", "code"], registry=r)
        self.backend_seconds = Histogram(
            "gateway_backend_request_duration_seconds", "Duration of calls to the model server",
            ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_inflight = Gauge(
            "gateway_backend_inflight_requests", "Calls to the model server in flight now (0 soon after the "
            "clients waiting for them gave up: their calls are cancelled)", registry=r)
        self.backend_retries = Counter("gateway_backend_retries", "Retried calls to the model server",
                                       ["method"], registry=r)
        self.circuit_state = Gauge("gateway_circuit_state",
                                   "Circuit breaker towards the model server: 0 closed, 1 open, 2 half-open",
                                   registry=r)
        self.model_available = Gauge("gateway_model_available",
                                     "1 when the model server reports the model AVAILABLE", ["model"], registry=r)
        self.model_version = Gauge("gateway_model_version", "Model version the gateway sends requests to",
                                   ["model"], registry=r)
        self.ready = Gauge("gateway_ready", "1 when /readyz answers 200", registry=r)

    def observe_request(self, transport: str, route: str, model: str, status: str, seconds: float) -> None:
        self.requests.labels(transport, route, model, status).inc()
        self.request_seconds.labels(transport, route, model).observe(seconds)

    def observe_stages(self, model: str, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds.labels(stage, model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
