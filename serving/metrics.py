"""Prometheus metrics, named and labelled as TensorFlow Serving exports them.

TF Serving names its metrics `/tensorflow/serving/request_count` & co. and its exporter turns the
slashes into colons: `:tensorflow:serving:request_count`. Latencies are histograms in
microseconds with TF's buckets (10 µs × 1.8^i). Counters carry no `_total` suffix and no
`_created` series, as in TF Serving's exporter, so dashboards and alerts written for the real server
work here unchanged; `render()` writes that format. Two series exist only here (the real server
has no equivalent), prefixed `serving_`: requests in flight and requests waiting for a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from serving.errors import ServingError

# TF's monitoring::Buckets::Exponential(10, 1.8, 33), microseconds (about 20 minutes at the top).
LATENCY_BUCKETS_US = tuple(round(10 * 1.8 ** i, 3) for i in range(33))
BATCH_SIZE_BUCKETS = tuple(2 ** i for i in range(15))


class ServerMetrics:
    """Every metric of the server, in one registry (one per server instance)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ["model_name", "status"], registry=registry)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint", "status"], buckets=LATENCY_BUCKETS_US, registry=registry)
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"], buckets=LATENCY_BUCKETS_US, registry=registry)
        self.load_attempt_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "The number of times a SavedModel was loaded.",
            ["model_path", "status"], registry=registry)
        self.load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ["model_path"], registry=registry)
        self.warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ["model_path", "status"], buckets=LATENCY_BUCKETS_US, registry=registry)
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time (in microseconds) spent by a request waiting for its batch.",
            ["thread_pool_name"], buckets=LATENCY_BUCKETS_US, registry=registry)
        self.input_batch_size = Histogram(
            ":tensorflow:serving:batching_session:input_batch_size",
            "Distribution of the number of rows in each request.",
            ["thread_pool_name"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.processed_batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Distribution of the number of rows in each executed batch, padding included.",
            ["thread_pool_name"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Distribution of the number of padding rows added to a batch.",
            ["execution_batch_size"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.requests_in_flight = Gauge(
            "serving_requests_in_flight", "Requests being processed (python -m serving only).",
            ["entrypoint"], registry=registry)
        self.batch_queue_tasks = Gauge(
            "serving_batch_queue_tasks", "Requests waiting for a batch to run (python -m serving only).",
            ["model_name"], registry=registry)

    @contextlib.contextmanager
    def track_request(self, model_name: str, api: str, entrypoint: str) -> Iterator[None]:
        """Count one request and time it, labelled with the status it ends with."""
        in_flight = self.requests_in_flight.labels(entrypoint)
        in_flight.inc()
        start = time.perf_counter()
        status = "OK"
        try:
            yield
        except ServingError as exc:
            status = exc.code_name
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            in_flight.dec()
            self.request_count.labels(model_name, status).inc()
            self.request_latency.labels(model_name, api, entrypoint, status).observe(
                (time.perf_counter() - start) * 1e6)

    def render(self) -> str:
        """The registry in TF Serving's Prometheus text format."""
        lines = []
        for family in self.registry.collect():
            if not family.samples:
                continue
            lines.append(f"# HELP {family.name} {family.documentation}")
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = family.name if family.type == "counter" else sample.name
                labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
                lines.append(f"{name}{{{labels}}} {floatToGoString(sample.value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
