"""The fleet's pure rules, in-process: backend targets, version routing, traffic shares, endpoint
health and the canary report's verdict. (The same rules end to end: tests/gateway/test_gateway_fleet.py.)"""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.canary_report import parse, verdict
from gateway.errors import ErrorKind, GatewayError
from gateway.resilience import EndpointHealth
from gateway.routing import Route, TrafficSplit, VersionRequest, choose, default_route
from gateway.settings import ModelSettings
from gateway.targets import TargetError, parse_target, resolve

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast


# -- targets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, addresses, host, port", [
    ("127.0.0.1:8500", "single", ("127.0.0.1:8500",), "127.0.0.1", 8500),
    ("model-server", "single", ("model-server:8500",), "model-server", 8500),
    ("ipv4:10.0.0.1:8500,10.0.0.2:9000", "static", ("10.0.0.1:8500", "10.0.0.2:9000"), "10.0.0.1", 8500),
    ("a:1, b:2", "static", ("a:1", "b:2"), "a", 1),
    ("ipv6:[::1]:8500,[::2]:8500", "static", ("[::1]:8500", "[::2]:8500"), "::1", 8500),
    ("dns:///model-server.imgclass.svc:8500", "dns", (), "model-server.imgclass.svc", 8500),
    ("dns:model-server", "dns", (), "model-server", 8500),
])
def test_backend_targets_parse(text, kind, addresses, host, port):
    target = parse_target(text)
    assert (target.kind, target.addresses, target.host, target.port) == (kind, addresses, host, port)


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("a:1,,b:2", "empty entry"), ("a:1,a:1", "twice"), ("a:http", "not a port"),
    ("a:70000", "not a port"), ("dns://8.8.8.8/name:1", "DNS server"), ("[::1:8500", "unclosed"),
])
def test_bad_backend_targets_say_why(text, words):
    with pytest.raises(TargetError, match=words):
        parse_target(text)


def test_a_dns_target_resolves_to_one_endpoint_per_address():
    async def getaddrinfo(host, port, type):  # the resolver's contract: loop.getaddrinfo's answer shape
        assert (host, port, type) == ("model-server", 8500, socket.SOCK_STREAM)
        return [(socket.AF_INET, type, 6, "", ("10.0.0.2", port)), (socket.AF_INET, type, 6, "", ("10.0.0.1", port)),
                (socket.AF_INET6, type, 6, "", ("fd00::1", port, 0, 0)), (socket.AF_INET, type, 6, "", ("10.0.0.1", port))]

    addresses = asyncio.run(resolve(parse_target("dns:///model-server:8500"), getaddrinfo))
    assert addresses == ["10.0.0.1:8500", "10.0.0.2:8500", "[fd00::1]:8500"]


# -- routing ------------------------------------------------------------------------------------------

def first(newest: dict[str, int]) -> str:
    return next(iter(newest))


def route(served, settings: ModelSettings = ModelSettings(), request: VersionRequest = VersionRequest(),
          pick=first) -> Route:
    return choose("m", request, settings, served, pick, TrafficSplit("c"), TrafficSplit("s"))


def test_default_traffic_takes_the_newest_version_every_endpoint_serves():
    assert route({"a": frozenset({1, 2}), "b": frozenset({1})}) == Route(1, "common")
    assert route({"a": frozenset({1, 2}), "b": frozenset({1, 2})}) == Route(2, "common")


def test_without_a_common_version_each_endpoint_answers_with_its_newest():
    served = {"a": frozenset({2}), "b": frozenset({1}), "c": frozenset({1})}
    assert route(served, pick=lambda newest: "a") == Route(2, "newest_on_endpoint")
    assert route(served, pick=lambda newest: "b") == Route(1, "newest_on_endpoint")
    assert default_route(ModelSettings(), served, None) == (None, "per_endpoint")


def test_a_caller_names_a_version_or_a_label():
    settings = ModelSettings(labels={"stable": 1, "canary": 2})
    served = {"a": frozenset({1, 2}), "b": frozenset({1})}
    assert route(served, settings, VersionRequest(version=2)) == Route(2, "requested", strict=True)
    assert route(served, settings, VersionRequest(label="stable")) == Route(1, "label", strict=True)
    for request, kind, words in [(VersionRequest(version=3), ErrorKind.VERSION_NOT_FOUND, "serves versions 1, 2; labels canary=2"),
                                 (VersionRequest(label="beta"), ErrorKind.VERSION_NOT_FOUND, "labels: canary, stable")]:
        with pytest.raises(GatewayError, match=words) as err:
            route(served, settings, request)
        assert err.value.kind is kind
    with pytest.raises(GatewayError) as err:
        route({}, settings, VersionRequest(version=1))
    assert err.value.kind is ErrorKind.UNAVAILABLE


@pytest.mark.parametrize("version, label, words", [
    (-1, "", "version must be 0 (the gateway's choice) or more, not -1"),
    (0, "x" * 129, "version_label must be at most 128 characters, not 129"),
    (1, "stable", "not both"),
])
def test_what_no_model_could_serve_is_refused_before_the_fleet_is_asked(version, label, words):
    with pytest.raises(GatewayError) as err:
        VersionRequest(version, label)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and words in str(err.value)
    assert VersionRequest(0, "x" * 128).label  # the longest label a request may name


def test_a_canary_takes_its_exact_share_and_default_traffic_never_sees_the_candidate():
    settings = ModelSettings(labels={"canary": 2}, canary={"label": "canary", "percent": 10})
    served = {"a": frozenset({1, 2}), "b": frozenset({1, 2})}
    canary, shadow = TrafficSplit("c"), TrafficSplit("s")
    versions = [choose("m", VersionRequest(), settings, served, first, canary, shadow).version for _ in range(1000)]
    assert versions.count(2) == 100 and set(versions) == {1, 2}  # 1 is served by all: the default, not 2


def test_a_canary_without_a_healthy_endpoint_leaves_its_share_to_the_default():
    settings = ModelSettings(canary={"version": 3, "percent": 100})
    assert route({"a": frozenset({1, 2})}, settings) == Route(2, "common")


def test_when_only_the_candidate_is_served_default_traffic_uses_it():
    settings = ModelSettings(canary={"version": 2, "percent": 0})
    assert route({"a": frozenset({2})}, settings) == Route(2, "common")


def test_a_pinned_default_version_wins_while_it_is_served():
    settings = ModelSettings(labels={"stable": 1}, default_version={"label": "stable"})
    assert route({"a": frozenset({1, 2}), "b": frozenset({2})}, settings) == Route(1, "pinned")
    assert route({"a": frozenset({2})}, settings) == Route(2, "common")


def test_a_shadow_copy_goes_to_its_candidate_and_not_to_the_answering_version():
    settings = ModelSettings(default_version={"version": 1}, shadow={"version": 2, "percent": 100})
    assert route({"a": frozenset({1}), "b": frozenset({2})}, settings) == Route(1, "pinned", shadow=2)
    assert route({"a": frozenset({1})}, settings) == Route(1, "pinned")  # candidate not served: no copy


def test_shares_by_key_are_sticky_and_close_to_the_percent():
    split = TrafficSplit("canary:m")
    hits = [split.hit(10, f"caller-{i}") for i in range(20_000)]
    assert abs(sum(hits) / len(hits) - 0.10) < 0.01
    assert [split.hit(10, f"caller-{i}") for i in range(200)] == hits[:200]
    assert TrafficSplit("other").hit(10, "caller-1") in (True, False)  # another salt, another draw
    assert not split.hit(0, "k") and split.hit(100, "k")


@pytest.mark.parametrize("bad, words", [
    ({"canary": {"label": "beta", "percent": 5}}, "not defined under labels"),
    ({"canary": {"version": 2, "label": "x", "percent": 5}}, "exactly one"),
    ({"shadow": {"version": 2, "percent": 101}}, "less than or equal to 100"),
    ({"labels": {"stable": 0}}, "version >= 1"),
])

def test_routing_settings_are_checked(bad, words):
    with pytest.raises(ValueError, match=words):
        ModelSettings(**bad)


# -- endpoint health -----------------------------------------------------------------------------------

def test_an_endpoint_is_ejected_after_failures_and_readmitted_by_its_status_check():
    now = [0.0]
    health = EndpointHealth(failure_threshold=3, eject_seconds=2.0, clock=lambda: now[0])
    assert not health.record_failure() and not health.record_failure()
    health.record_success()
    assert [health.record_failure() for _ in range(3)] == [False, False, True]
    assert (health.state, health.reason) == ("ejected", "failing")
    assert not health.probe_succeeded(), "a failing endpoint stays out for eject_seconds"
    now[0] = 2.5
    assert health.probe_succeeded() and health.healthy
    assert health.record_failure(), "back on probation: one more failure ejects it again"


def test_an_unreachable_endpoint_is_out_at_once_and_back_at_its_first_good_check():
    health = EndpointHealth(failure_threshold=5, eject_seconds=30.0, clock=lambda: 0.0)
    assert health.probe_failed() and health.reason == "unreachable"
    assert not health.probe_failed(), "already out"
    assert health.probe_succeeded() and health.healthy


# -- the canary report -----------------------------------------------------------------------------------

METRICS = """# TYPE gateway_shadow_comparisons_total counter
gateway_shadow_comparisons_total{candidate_version="2",decision="same",model="m",top1="same"} 990.0
gateway_shadow_comparisons_total{candidate_version="2",decision="different",model="m",top1="same"} 10.0
gateway_shadow_comparisons_total{candidate_version="3",decision="different",model="m",top1="different"} 600.0
# TYPE gateway_shadow_score_delta histogram
gateway_shadow_score_delta_sum{candidate_version="2",model="m"} 5.0
gateway_shadow_score_delta_count{candidate_version="2",model="m"} 1000.0
# TYPE gateway_shadow_skipped_total counter
gateway_shadow_skipped_total{model="m",reason="busy"} 4.0
"""


def test_the_canary_report_promotes_only_an_agreeing_candidate_with_enough_samples():
    candidates, skipped = parse(METRICS)
    assert [(c.version, c.samples, c.decision_agreement) for c in candidates] == [("2", 1000, 0.99), ("3", 600, 0.0)]
    assert candidates[0].mean_delta == 0.005 and skipped == {"busy": 4.0}
    assert verdict(candidates[:1], 0.99, 500) == (True, [])
    promote, reasons = verdict(candidates, 0.99, 500)
    assert not promote and reasons == ["m v3: decisions agree 0.00%, below 99.00%"]
    assert verdict(candidates[:1], 0.99, 2000)[0] is False
    assert verdict([], 0.99, 1)[0] is False
