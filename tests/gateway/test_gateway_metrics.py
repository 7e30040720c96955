"""The gateway's metrics object: a hot-path child lookup is the metric's own child, counted in it."""

from __future__ import annotations

import pytest

from gateway.metrics import Metrics

pytestmark = pytest.mark.unit


def test_children_are_looked_up_once_and_count_in_the_metric():
    metrics = Metrics()
    labels = ("grpc", "Classify", "fashion", "1", "OK")
    first = metrics.requests_of(*labels)
    assert metrics.requests_of(*labels) is first is metrics.requests.labels(*labels)
    metrics.observe_request("grpc", "Classify", "fashion", 1, "OK", 0.004)
    metrics.observe_request("grpc", "Classify", "fashion", 1, "OK", 0.006)
    metrics.observe_stages("fashion", {"decode": 0.001, "predict": 0.003})
    sample = metrics.registry.get_sample_value
    assert sample("gateway_requests_total", dict(zip(("transport", "route", "model", "version", "status"),
                                                     labels))) == 2
    assert sample("gateway_request_duration_seconds_count",
                  {"transport": "grpc", "route": "Classify", "model": "fashion"}) == 2
    assert sample("gateway_stage_duration_seconds_sum", {"stage": "predict", "model": "fashion"}) == 0.003
