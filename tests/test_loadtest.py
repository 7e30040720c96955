"""The load test's own machinery: answer checks, load shapes, the SLO verdict, and a real run.

The smoke tests run `python -m loadtest.run` (Locust in a child process, as `make loadtest` does)
for a few seconds against the session's real stack: once with limits any working stack meets
(and zero failed requests, so every answer must pass the checks), once with an impossible p95
limit that must fail the run and name the limit. Locust itself is never imported here: it
monkey-patches the standard library with gevent on import.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import options, shapes, slo, summary
from loadtest.checks import Answer, Catalogue, InvalidAnswer, check_answer, check_count

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["shirt", "shoe", "bag"]


# -- answer checks ------------------------------------------------------------------------------

def catalogue() -> Catalogue:
    return Catalogue.from_models([("fashion", LABELS)], "not sure")


def answer(**changes) -> Answer:
    fields = dict(model="fashion", version=1, label="shoe", confident=True,
                  predictions=[("shoe", 0.9), ("bag", 0.07), ("shirt", 0.03)])
    return Answer(**(fields | changes))


def test_a_correct_answer_passes():
    check_answer(answer(), catalogue(), "fashion", 3)
    check_answer(answer(label="not sure", confident=False), catalogue(), "", 3)


@pytest.mark.parametrize("changes, message", [
    (dict(model="other"), "asked model"),
    (dict(version=0), "model_version"),
    (dict(predictions=[]), "no predictions"),
    (dict(predictions=[("shoe", 0.9), ("bag", 0.1)]), "top_k=3"),
    (dict(predictions=[("shoe", 0.9), ("hat", 0.07), ("bag", 0.03)]), "hat"),
    (dict(predictions=[("shoe", 0.2), ("bag", 0.7), ("shirt", 0.1)], label="shoe"), "not sorted"),
    (dict(predictions=[("shoe", 1.5), ("bag", 0.07), ("shirt", 0.03)]), "outside [0, 1]"),
    (dict(label="bag"), "not the top label"),
    (dict(label="shoe", confident=False), "uncertain label"),
])
def test_wrong_answers_are_named(changes, message):
    with pytest.raises(InvalidAnswer, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_answer(answer(**changes), catalogue(), "fashion", 3)


def test_rest_answers_accept_int64_as_string_and_need_every_field():
    body = {"model": "fashion", "model_version": "2", "label": "shoe", "confident": True,
            "predictions": [{"label": "shoe", "score": 0.9}]}
    assert Answer.from_json(body).version == 2
    with pytest.raises(InvalidAnswer, match="confident"):
        Answer.from_json({k: v for k, v in body.items() if k != "confident"})


def test_catalogue_refuses_lists_that_cannot_validate():
    with pytest.raises(InvalidAnswer, match="no models"):
        Catalogue.from_models([], "not sure")
    with pytest.raises(InvalidAnswer, match="no labels"):
        Catalogue.from_models([("fashion", [])], "not sure")
    with pytest.raises(InvalidAnswer, match="model under test"):
        Catalogue.from_json({"models": [{"name": "fashion", "labels": LABELS}]}, "not sure", "cats")
    with pytest.raises(InvalidAnswer, match="sent 8 images, got 7"):
        check_count("ClassifyStream", 8, 7)


# -- load shapes --------------------------------------------------------------------------------

def test_steady_holds_then_ends():
    p = shapes.ShapeParams(users=10, spawn_rate=5, duration_s=30)
    assert shapes.steady(0, p) == shapes.steady(29.9, p) == (10, 5)
    assert shapes.steady(30, p) is None


def test_step_climbs_in_equal_stages_to_the_peak():
    p = shapes.ShapeParams(users=20, spawn_rate=5, duration_s=50, steps=4)
    users = [shapes.step(t, p)[0] for t in (0, 12.4, 12.6, 25, 37.5, 49.9)]
    assert users == [5, 5, 10, 15, 20, 20]
    assert shapes.step(50, p) is None


def test_spike_bursts_in_the_middle_and_returns_to_baseline():
    p = shapes.ShapeParams(users=40, spawn_rate=2, duration_s=100)
    assert shapes.spike(10, p) == (10, 2)
    assert shapes.spike(45, p) == (40, 40)  # all at once
    assert shapes.spike(70, p) == (10, 40)  # and gone at once
    assert shapes.spike(100, p) is None


# -- SLO verdict ---------------------------------------------------------------------------------

def measured(**changes) -> slo.Measured:
    return slo.Measured(**(dict(requests=1000, failures=5, p95_ms=80.0, p99_ms=150.0, rps=120.0) | changes))


def test_verdict_passes_within_every_limit():
    limits = slo.SloLimits(p95_ms=100, p99_ms=200, max_error_percent=1, min_rps=100)
    verdict = slo.evaluate(limits, measured())
    assert verdict.passed and "PASS" in verdict.render()


def test_verdict_names_each_missed_limit():
    limits = slo.SloLimits(p95_ms=50, p99_ms=100, max_error_percent=0.1, min_rps=500)
    verdict = slo.evaluate(limits, measured())
    assert not verdict.passed
    text = " | ".join(verdict.misses)
    for expected in ("p95 latency 80 ms > limit 50 ms", "p99 latency 150 ms > limit 100 ms",
                     "error rate 0.50 % > limit 0.1 %", "throughput 120.0 req/s < minimum 500 req/s"):
        assert expected in text
    assert "missed: p95" in verdict.render()


def test_a_run_without_requests_or_with_load_test_bugs_fails():
    assert "no requests" in slo.evaluate(slo.SloLimits(), measured(requests=0, failures=0)).misses[0]
    assert "raised 2 exception" in slo.evaluate(slo.SloLimits(), measured(exceptions=2)).misses[0]


# -- options and summary ------------------------------------------------------------------------

def test_options_round_trip_between_parsers():
    first = argparse.ArgumentParser()
    options.add_options(first)
    values = vars(first.parse_args(["--shape", "spike", "--slo-p95-ms", "250", "--model", "fashion"]))
    second = argparse.ArgumentParser()
    options.add_options(second)
    assert vars(second.parse_args(options.to_argv(values))) == values
    assert options.default_grpc_target("http://gw.example:8080/") == "gw.example:50051"


def test_stages_find_the_knee():
    rows, t, count = [], 0, 0
    for users, rps in ((2, 100), (4, 190), (6, 260), (8, 270), (10, 272)):
        for _ in range(5):
            t += 1
            count += rps
            rows.append({"Name": "Aggregated", "User Count": str(users), "Timestamp": str(t),
                         "Total Request Count": str(count), "Total Failure Count": "0", "95%": "10"})
    found = summary.stages(rows)
    assert [s.users for s in found] == [2, 4, 6, 8, 10]
    assert summary.knee(found).users == 6  # 6 -> 8 users adds < 10 %


def test_images_per_second_counts_the_images_batch_calls_carry():
    rows = [{"name": "Classify", "rps": 10.0}, {"name": "ClassifyBatch", "rps": 2.0},
            {"name": "/v1/classify (raw body)", "rps": 3.0}, {"name": "ListModels", "rps": 1.0},
            {"name": "Aggregated", "rps": 16.0}]
    assert summary.images_per_second(rows, batch_images=8) == 10 + 16 + 3


def test_bench_goals_judge_batching_against_the_better_off_variant():
    from loadtest import bench_report as br
    from loadtest.loadgen import LOADGEN_CPU, Sample
    from loadtest.machine import describe

    def sample(series: str, calls: int) -> Sample:
        return Sample(series, 32, 2, 1.0, 1, calls=calls, latencies_ms=[5.0] * 10,
                      cpu_seconds={LOADGEN_CPU: calls / 1000})

    result = br.BenchResult(started="now", machine=describe(), settings={}, samples=[
        sample(br.SERIES_GATEWAY_ON, 300), sample(br.SERIES_GATEWAY_OFF, 100),
        sample(br.SERIES_GATEWAY_OFF_WIDE, 250), sample(br.SERIES_DIRECT_BYTES, 310)])
    found = br.goals(result)

    def goal(prefix: str) -> br.Goal:
        return next(g for g in found if g.name.startswith(prefix))

    batching = goal("gateway micro-batching on vs off")
    assert batching.met is False and "1.20×" in batching.measured  # 300 / 250, not 300 / 100
    assert goal("through the gateway vs direct Predict").met is True
    assert goal("model server Predict vs in-process").met is None  # not measured in this result
    assert "not measured" in br.render(result, found)


# -- a real run ----------------------------------------------------------------------------------

def run_loadtest(gateway, report_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loadtest.run", "--host", gateway.http_url, "--grpc-target", gateway.grpc_target,
           "--duration", "4", "--users", "2", "--spawn-rate", "2", "--report-dir", str(report_dir), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_short_run_passes_a_lenient_slo_with_every_answer_valid(gateway, tmp_path):
    done = run_loadtest(gateway, tmp_path, "--slo-p95-ms", "60000", "--slo-p99-ms", "60000",
                        "--slo-error-percent", "0", "--slo-min-rps", "0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLO verdict: PASS" in done.stderr
    record = json.loads((tmp_path / "verdict.json").read_text())
    assert record["passed"] and record["measured"]["failures"] == 0
    names = {row["name"] for row in record["requests"] if row["requests"]}
    assert {"Classify", "ListModels", "/v1/classify (multipart)"} <= names  # both transports ran
    for name in ("summary.md", "report.html", "locust_stats.csv", "locust_stats_history.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "PASS" in (tmp_path / "summary.md").read_text().splitlines()[0]


@pytest.mark.slow
def test_an_impossible_slo_fails_the_run_and_names_the_limit(gateway, tmp_path):
    done = run_loadtest(gateway, tmp_path, "--slo-p95-ms", "0.001")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "SLO verdict: FAIL" in done.stderr
    assert "missed: p95 latency" in done.stderr and "> limit 0.001 ms" in done.stderr
    text = (tmp_path / "summary.md").read_text()
    assert "FAIL" in text.splitlines()[0] and "p95 latency" in text
