"""Prometheus metrics of the gateway, served at GET /metrics (listed in README, "Observability").

One `Metrics` object per process, holding its own registry (so tests and embedded uses never
collide in the client library's global one). Label values are bounded: model labels are only
names the gateway fronts ("" for requests without one, or naming an unknown one), routes are
templates, statuses are gRPC code names (gRPC) or HTTP status codes (REST).
"""

from __future__ import annotations

import os
from typing import Any

from gateway.workers import WORKER_ENV
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("decode", "queue_wait", "predict", "decide")
DELTA_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Children:
    """The labelled children of one metric, each looked up once: prometheus_client's labels()
    checks and locks on every call, and the hot path calls it several times per image. Only for
    metrics whose children are never removed (their label values are bounded anyway)."""

    def __init__(self, metric: Counter | Gauge | Histogram):
        self._labels = metric.labels
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)   # process_resident_memory_bytes & co.
        PlatformCollector(registry=r)

        self.requests = Counter(
            "gateway_requests", "Requests answered, by transport, route or RPC, model, model version (0: none) "
            "and status (the gRPC code name over grpc, e.g. NOT_FOUND; the HTTP status over http, e.g. 404)",
            ["transport", "route", "model", "version", "status"], registry=r)
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
        self.decisions = Counter("gateway_decisions", "Decisions by model version, label (including the "
                                 "uncertain one) and reason (OUT_OF_DISTRIBUTION's share is a first drift signal: "
                                 "traffic that no longer looks like the training data)",
                                 ["model", "version", "label", "confident", "reason"], registry=r)
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
                                   "The gateway's circuit towards the model servers: 0 closed, 1 open (every "
                                   "endpoint is ejected: requests fail fast)", registry=r)
        self.endpoints = Gauge("gateway_endpoints", "Model server endpoints by state (healthy, ejected)",
                               ["state"], registry=r)
        self.endpoint_versions = Gauge(
            "gateway_endpoint_versions", "1 for each model version a healthy model server endpoint serves "
            "(count by (version) shows the version skew of the fleet)", ["endpoint", "model", "version"], registry=r)
        self.endpoint_images = Counter("gateway_endpoint_images", "Images answered by each model server endpoint",
                                       ["endpoint", "model", "version"], registry=r)
        self.model_available = Gauge("gateway_model_available",
                                     "1 when a model server serves a version of the model the gateway can use",
                                     ["model"], registry=r)
        self.model_version = Gauge("gateway_model_version", "Model version default traffic goes to (0: none, or each "
                                   "endpoint its newest while no version is served by all)", ["model"], registry=r)
        self.caller_queue_depth = Gauge("gateway_caller_queue_depth", "Images waiting for a batch, by model and "
                                        "caller (the first 20 callers by name, the rest as other)",
                                        ["model", "caller"], registry=r)
        self.caller_queue_wait = Histogram("gateway_caller_queue_wait_seconds", "Time an image waited for its "
                                           "batch, by model and caller", ["model", "caller"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.caller_rejections = Counter("gateway_caller_rejections", "Images refused as overload (the queue "
                                         "or the caller's limit), by model and caller", ["model", "caller"],
                                         registry=r)
        self.shadow_comparisons = Counter(
            "gateway_shadow_comparisons", "Shadow answers compared with the answer the caller got: same or "
            "different top-1 label and decision (label and confident)",
            ["model", "candidate_version", "top1", "decision"], registry=r)
        self.shadow_score_delta = Histogram(
            "gateway_shadow_score_delta", "Absolute difference between the shadow's and the answer's score for "
            "the answer's top-1 label", ["model", "candidate_version"], buckets=DELTA_BUCKETS, registry=r)
        self.shadow_skipped = Counter("gateway_shadow_skipped", "Shadow copies not sent or not compared, by reason "
                                      "(busy, unavailable, failed, input)", ["model", "reason"], registry=r)
        self.ready = Gauge("gateway_ready", "1 when /readyz answers 200", registry=r)
        self.worker = Gauge("gateway_worker", "1, labelled with the index of the gateway worker process that "
                            "answered this scrape (0 when there is one)", ["worker"], registry=r)
        self.worker.labels(os.environ.get(WORKER_ENV, "0")).set(1)
        self._endpoint_versions: set[tuple[str, str, str]] = set()
        self._endpoint_image_labels: set[tuple[str, str, str]] = set()
        # The per-request and per-image series: children looked up once.
        self.requests_of = Children(self.requests)
        self.request_seconds_of = Children(self.request_seconds)
        self.stage_seconds_of = Children(self.stage_seconds)
        self.decisions_of = Children(self.decisions)
        self.caller_queue_wait_of = Children(self.caller_queue_wait)
        self.inflight_of = Children(self.inflight)
        self.backend_requests_of = Children(self.backend_requests)
        self.backend_seconds_of = Children(self.backend_seconds)

    def observe_request(self, transport: str, route: str, model: str, version: int, status: str,
                        seconds: float) -> None:
        self.requests_of(transport, route, model, str(version), status).inc()
        self.request_seconds_of(transport, route, model).observe(seconds)

    def observe_stages(self, model: str, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds_of(stage, model).observe(seconds)

    def set_endpoint_versions(self, served: set[tuple[str, str, int]]) -> None:
        """`gateway_endpoint_versions` = 1 for each (endpoint, model, version) served; others removed."""
        wanted = {(e, m, str(v)) for e, m, v in served}
        for labels in self._endpoint_versions - wanted:
            self.endpoint_versions.remove(*labels)
        for labels in wanted - self._endpoint_versions:
            self.endpoint_versions.labels(*labels).set(1)
        self._endpoint_versions = wanted

    def count_endpoint_images(self, address: str, model: str, version: int, images: int) -> None:
        labels = (address, model, str(version))
        self._endpoint_image_labels.add(labels)
        self.endpoint_images.labels(*labels).inc(images)

    def forget_endpoint(self, address: str) -> None:
        """Drop the series of an endpoint that left the fleet (label values stay bounded)."""
        for labels in [labels for labels in self._endpoint_image_labels if labels[0] == address]:
            self._endpoint_image_labels.discard(labels)
            self.endpoint_images.remove(*labels)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
