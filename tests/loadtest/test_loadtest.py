"""The load test's own machinery: answer checks, load shapes, the SLO verdict, and real runs.

The smoke tests run `python -m loadtest.run` (Locust in a child process, as `make loadtest` does)
for a few seconds against the session's real stack: once with limits any working stack meets,
per route and per transport too (and zero failed requests, so every answer must pass the checks);
once with impossible limits that must fail the run and name each one; and once against a gateway
slowed on purpose (GATEWAY_MAX_WAIT_MS=200 under concurrent load, so batches wait), compared with
the first run as its baseline: it must fail and name queue_wait. The first run compared with
itself must pass. A quiet-flood run (--callers) must report both callers, client and gateway side,
with the quiet one never refused. The bench's load generator, paced, keeps to its rate. Locust
itself is never imported here: it monkey-patches the standard library with gevent on import.
Comparisons between runs are the baseline tests' (tests/loadtest/test_loadtest_baseline.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import options, plots, run, shapes, slo, summary
from loadtest.checks import Answer, Catalogue, InvalidAnswer, check_answer, check_count
from loadtest.loadgen import LoadGenerator, Workload
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("text, selector, limits", [
    ("grpc Classify:p95<=150ms", ("grpc", "Classify"), [("p95", 150.0)]),
    ("rest: p99 <= 2s, errors<=1%", ("rest", None), [("p99", 2000.0), ("errors", 1.0)]),
    ("http /v1/classify:p99.9<=300", ("rest", "/v1/classify"), [("p99.9", 300.0)]),
    ("ClassifyStream:rps>=5/s", (None, "ClassifyStream"), [("rps", 5.0)]),
    (":p50<=20ms", (None, None), [("p50", 20.0)]),
])
def test_slo_rules_parse(text, selector, limits):
    rule = slo.parse_rule(text)
    assert (rule.selector.transport, rule.selector.route) == selector
    assert [(lim.metric, lim.value) for lim in rule.limits] == limits


@pytest.mark.parametrize("text, message", [
    ("grpc Classify", "expected"), ("grpc:p95>=100ms", "takes <="), ("rest:rps<=5", "takes >="),
    ("rest:p95<=5%", "unit"), ("rest:p0<=5", "percentile"), ("rest:latency<=5", "not a limit"),
])
def test_slo_rules_refuse_what_they_cannot_judge(text, message):
    with pytest.raises(slo.SloSpecError, match=message):
        slo.parse_rule(text)


def test_slo_file_maps_selectors_to_limits(tmp_path):
    path = tmp_path / "slos.yaml"
    path.write_text("grpc Classify: p95<=150ms, p99<=400ms\nrest: [p95<=200ms, errors<=1%]\n")
    assert [r.describe() for r in slo.load_rules(path)] == [
        "grpc Classify: p95 <= 150 ms, p99 <= 400 ms", "rest: p95 <= 200 ms, errors <= 1 %"]
    assert len(slo.load_rules(ROOT / "loadtest" / "slos.yaml")) == 6  # the committed example stays valid
    path.write_text("rest: {p95: 200}\n")
    with pytest.raises(slo.SloSpecError, match="limit string"):
        slo.load_rules(path)


def test_route_rules_join_the_verdict_and_a_rule_matching_nothing_misses():
    selector = slo.Selector.parse("rest /v1/classify")
    assert selector.matches("rest", "/v1/classify (multipart)") and not selector.matches("grpc", "Classify")
    slow = slo.judge(slo.parse_rule("grpc Classify:p95<=150ms,errors<=1%"),
                     slo.Figures(requests=100, failures=0, rps=10.0, percentiles_ms={"p95": 230.0}))
    typo = slo.judge(slo.parse_rule("grpc Clasify:p95<=150ms"), None, ["grpc Classify"])
    verdict = slo.evaluate(slo.SloLimits(p95_ms=500), measured(), [slow, typo])
    assert not verdict.passed and verdict.misses == []  # the aggregate held
    assert verdict.to_json()["misses"] == ["grpc Classify: p95 latency 230 ms > limit 150 ms",
                                           "grpc Clasify: no request of this run matched (requests seen: "
                                           "grpc Classify)"]
    assert "missed: grpc Classify: p95 latency 230 ms" in verdict.render()


# -- options and summary ------------------------------------------------------------------------

def test_options_round_trip_between_parsers():
    first = argparse.ArgumentParser()
    options.add_options(first)
    values = vars(first.parse_args(["--shape", "spike", "--slo-p95-ms", "250", "--model", "fashion",
                                    "--slo", "grpc:p95<=1s", "--slo", "rest:errors<=1%"]))
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


def test_a_plot_that_cannot_be_drawn_is_reported_not_raised(tmp_path):
    assert "fewer than two seconds" in plots.render(tmp_path, [], [], [], None)[plots.TIMELINE]
    assert not list(tmp_path.iterdir())


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


@pytest.mark.unit
def test_the_title_says_what_was_judged_and_a_reused_report_folder_loses_the_old_run(tmp_path):
    from loadtest import baseline, compare

    regressed = baseline.Comparison("base", compare.Tolerance(), [compare.Row("all", [
        compare.judge("p95", 10, 90, compare.LOWER_BETTER, compare.Tolerance(), unit="ms")])])
    assert run.outcome(None, None, 0) == "NO VERDICT"  # exit code 0 without a verdict proves nothing
    assert run.outcome({"passed": True}, None, 0) == "PASS"
    assert run.outcome({"passed": True}, regressed, 1) == "SLO held; baseline regressed"
    assert run.outcome({"passed": False}, None, 1) == "FAIL"
    for name in ("verdict.json", "locust_stats.csv", "timeline.png", "summary.md", "notes.txt"):
        (tmp_path / name).write_text("old")
    run.clear_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # only what a run writes


# -- real runs ----------------------------------------------------------------------------------

SMOKE_SECONDS = "4"


def run_loadtest(gateway, report_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """4 seconds, 4 users (3 gRPC, 1 REST): enough concurrency for batches to form."""
    cmd = [sys.executable, "-m", "loadtest.run", "--host", gateway.http_url, "--grpc-target", gateway.grpc_target,
           "--duration", SMOKE_SECONDS, "--users", "4", "--spawn-rate", "4", "--report-dir", str(report_dir),
           "--scrape-interval", "0.5", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def lenient_run(gateway, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """A run that must pass: lenient limits, per route and transport too; no failed request allowed."""
    report = tmp_path_factory.mktemp("lenient")
    slo_file = report.parent / "slos.yaml"
    slo_file.write_text("rest /v1/classify: p95<=60s, errors<=0%\n")
    done = run_loadtest(gateway, report, "--slo-p95-ms", "60000", "--slo-p99-ms", "60000",
                        "--slo-error-percent", "0", "--slo-min-rps", "0.5",
                        "--slo", "grpc Classify:p99<=60s,errors<=0%", "--slo", "grpc:rps>=0.1",
                        "--slo-file", str(slo_file))
    return done, report


@pytest.mark.slow
def test_short_run_passes_lenient_slos_with_every_answer_valid(lenient_run):
    done, report = lenient_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLO verdict: PASS" in done.stderr and "held: grpc Classify: p99 <= 60000 ms" in done.stderr
    record = json.loads((report / "verdict.json").read_text())
    assert record["passed"] and record["measured"]["failures"] == 0
    assert [r["rule"] for r in record["slos"] if r["passed"]] == [
        "rest /v1/classify: p95 <= 60000 ms, errors <= 0 %", "grpc Classify: p99 <= 60000 ms, errors <= 0 %",
        "grpc: throughput >= 0.1 req/s"]
    names = {row["name"] for row in record["requests"] if row["requests"]}
    assert {"Classify", "ListModels", "/v1/classify (multipart)"} <= names  # both transports ran
    assert {row["name"] for row in record["transports"]} == {"all grpc", "all rest"}
    gateway = record["gateway"]  # what the gateway measured of itself, for a later comparison
    assert set(gateway["stages_ms"]) == {"decode", "queue_wait", "predict", "decide"}
    assert gateway["predict_calls"] > 0 and gateway["queue_depth"] is not None
    for name in ("summary.md", "report.html", "locust_stats.csv", "locust_stats_history.csv",
                 "gateway_metrics.csv", plots.TIMELINE):
        assert (report / name).stat().st_size > 0, name
    text = (report / "summary.md").read_text()
    assert "PASS" in text.splitlines()[0]
    assert f"![throughput, latency, failures and gateway stages over the run]({plots.TIMELINE})" in text
    assert "| grpc Classify | p99 ≤ 60000 ms | " in text and "## Inside the gateway" in text


@pytest.mark.slow
def test_a_baseline_identical_to_the_run_passes(lenient_run):
    _, report = lenient_run
    done = subprocess.run([sys.executable, "-m", "loadtest.baseline", str(report), "--baseline", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "baseline: PASS" in done.stdout and "within the tolerance" in done.stdout


@pytest.mark.slow
def test_a_slower_gateway_fails_against_the_baseline_and_names_queue_wait(lenient_run, model_server, tmp_path):
    _, baseline = lenient_run
    slow = stack.start_gateway(backend=model_server.grpc_target, env=os.environ | {"GATEWAY_MAX_WAIT_MS": "200"})
    try:
        done = run_loadtest(slow, tmp_path, "--baseline", str(baseline / "verdict.json"),
                            "--slo-p95-ms", "60000", "--slo-p99-ms", "60000")
    finally:
        slow.process.stop()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "SLO verdict: PASS" in done.stderr  # the limits held: the baseline failed the run
    assert "baseline: REGRESSED" in done.stderr and "regressed: all requests: p50" in done.stderr
    record = json.loads((tmp_path / "verdict.json").read_text())["baseline"]
    assert record["stage"] == "queue_wait", record["attribution"]
    assert "queue_wait +" in record["attribution"] and "mean batch" in record["attribution"]
    text = (tmp_path / "summary.md").read_text()
    assert "SLO held; baseline regressed" in text.splitlines()[0] and "## Against the baseline" in text
    assert f"**Where it moved:** {record['attribution']}" in text


@pytest.mark.slow
def test_impossible_slos_fail_the_run_and_name_each_limit(gateway, tmp_path):
    done = run_loadtest(gateway, tmp_path, "--slo-p95-ms", "0.001", "--slo", "grpc Classify:p99<=0.001ms",
                        "--slo", "grpc Clasify:p95<=1s", "--metrics-url", "none")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "SLO verdict: FAIL" in done.stderr
    for miss in ("missed: p95 latency", "> limit 0.001 ms", "missed: grpc Classify: p99 latency",
                 "missed: grpc Clasify: no request of this run matched"):
        assert miss in done.stderr, miss
    text = (tmp_path / "summary.md").read_text()
    assert "FAIL" in text.splitlines()[0] and "p95 latency" in text and "Not read (`--metrics-url none`)" in text


@pytest.mark.slow
def test_a_quiet_flood_run_reports_both_callers(gateway, tmp_path):
    done = run_loadtest(gateway, tmp_path, "--callers", "quiet-flood", "--users", "6", "--spawn-rate", "6",
                        "--slo", "grpc Classify (quiet):errors<=0%", "--slo-p95-ms", "60000", "--slo-p99-ms", "60000")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held: grpc Classify (quiet): errors <= 0 %" in done.stderr  # one caller's SLO
    record = json.loads((tmp_path / "verdict.json").read_text())
    rows = {row["name"]: row for row in record["requests"] if row["requests"]}
    quiet, flood = rows["Classify (quiet)"], rows["Classify (flood)"]
    assert quiet["failures"] == 0 and flood["requests"] > quiet["requests"]  # 1 quiet user, 5 flooding
    assert not {"Classify", "ClassifyBatch", "/v1/classify (multipart)"} & set(rows)  # the mix did not run
    callers = record["gateway"]["callers"]
    assert callers["quiet"]["images"] > 0 and callers["quiet"]["refused"] == 0 and callers["flood"]["images"] > 0
    text = (tmp_path / "summary.md").read_text()
    assert "## Callers" in text and "| quiet | " in text and "| flood | " in text
    assert "**The quiet caller was never refused**" in text and "the quiet caller's p50 is" in text


def test_bad_rules_tolerances_and_baselines_stop_the_run_before_it_starts(tmp_path, capsys):
    for argv, message in ((["--slo", "grpc:p95>=1"], "takes <="),
                          (["--slo-file", str(tmp_path / "none.yaml")], "none.yaml"),
                          (["--tolerance-ms", "-1"], "must be >= 0"),
                          (["--baseline", str(tmp_path)], "verdict.json: no such file"),
                          (["--callers", "quiet-flood", "--users", "1"], "--users >= 2")):
        with pytest.raises(SystemExit) as exc:
            run.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv


def test_paced_callers_keep_to_their_rate_and_unpaced_ones_do_not(gateway):
    check = Workload("health", gateway.grpc_target)
    with LoadGenerator(1, warmup_s=0.2, seconds=1.5) as gen:
        paced = gen.measure("paced", dataclasses.replace(check, calls_per_s=40.0), 4)
        free = gen.measure("free", check, 4)
    assert not paced.errors and not free.errors
    assert 0 < paced.calls <= 40 * 1.5 + 4  # each of the 4 callers at most one call ahead of its pace
    assert free.calls > 3 * paced.calls
