"""Comparing runs: the tolerance rules, the load test's delta table and stage attribution, the
benchmark's row-by-row comparison, and reading the gateway's metrics.

Pure units on small records written here; the real runs that produce such records, and a run
slowed on purpose that must name queue_wait, are the smoke tests in tests/loadtest/test_loadtest.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtest import baseline, bench_baseline, scrape
from loadtest import compare as cmp

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

TOL = cmp.Tolerance(percent=20, ms=5, error_points=1, min_requests=20)


@pytest.mark.parametrize("direction, base, now, unit, state", [
    (cmp.LOWER_BETTER, 100, 119, "ms", cmp.SAME),        # within 20 %
    (cmp.LOWER_BETTER, 100, 121, "ms", cmp.REGRESSED),
    (cmp.LOWER_BETTER, 10, 14, "ms", cmp.SAME),          # +40 %, but within 5 ms
    (cmp.LOWER_BETTER, 10, 16, "ms", cmp.REGRESSED),
    (cmp.LOWER_BETTER, 100, 70, "ms", cmp.IMPROVED),
    (cmp.HIGHER_BETTER, 100, 79, "req/s", cmp.REGRESSED),
    (cmp.ERROR_SHARE, 0.5, 1.4, "%", cmp.SAME),          # +0.9 points
    (cmp.ERROR_SHARE, 0.5, 1.6, "%", cmp.REGRESSED),
])
def test_tolerance_rules(direction, base, now, unit, state):
    assert cmp.judge("x", base, now, direction, TOL, unit=unit).state == state


def _row(type_: str, name: str, requests: int, p50: float, p95: float, mean: float, rps: float = 10.0) -> dict:
    return {"type": type_, "name": name, "requests": requests, "failures": 0, "p50_ms": p50, "p95_ms": p95,
            "p99_ms": p95, "max_ms": p95, "mean_ms": mean, "rps": rps}


def _record(p95: float, stages: dict[str, float] | None, users: int = 4) -> dict:
    gateway = None if stages is None else {
        "seconds": 10.0, "stages_ms": stages, "mean_batch": 2.0, "predict_calls": 500.0,
        "queue_depth": {"mean": 0.5, "max": 3}, "backend": {"errors": 0, "retries": 0},
        "cpu_ms_per_request": 2.0, "routes": {"grpc Classify": {"count": 400, "mean_ms": p95 / 2}}}
    return {"requests": [_row("grpc", "Classify", 400, 10, p95, p95 / 2), _row("grpc", "ListModels", 3, 5, 5, 5),
                         _row("", "Aggregated", 403, 10, p95, p95 / 2)],
            "transports": [_row("grpc", "all grpc", 403, 10, p95, p95 / 2)],
            "settings": {"users": users, "slo-p95-ms": 500}, "gateway": gateway}


STAGES = {"decode": 3.0, "queue_wait": 1.0, "predict": 8.0, "decide": 0.1}


def test_a_latency_change_no_gateway_stage_explains_is_placed_outside_the_gateway():
    result = baseline.compare(_record(80, STAGES, users=8), _record(40, STAGES), TOL, "base")
    assert not result.passed and result.stage is None
    rows = {row.label: row for row in result.rows}
    assert rows["grpc ListModels"].verdict == "under 20 requests: not judged"
    assert rows["grpc Classify"].verdict == "**regressed**: p95, p99"
    assert result.attribution.startswith("all requests p95 +40 ms (mean +20.0 ms): no gateway stage moved")
    assert "time inside the gateway +20.0 ms of the client's +20.0 ms" in result.attribution
    assert result.notes == ["The runs differ in settings, so not every difference is the system's: users 4 → 8."]


def test_a_stage_that_moved_is_named_and_missing_metrics_are_said():
    slower = STAGES | {"predict": 30.0}
    result = baseline.compare(_record(80, slower), _record(40, STAGES), TOL)
    assert result.stage == "predict" and "predict +22.0 ms per image" in result.attribution
    result = baseline.compare(_record(80, None), _record(40, STAGES), TOL)
    assert result.stage is None and "this run: not recorded" in result.attribution


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _bench_run(folder: Path, images_per_s: float, queue_wait_ms: float, cpu_ms: float, goals: dict[str, str],
               extra_series: bool) -> Path:
    folder.mkdir()
    rows = [{"series": "gateway, batching on", "concurrency": "32", "processes": "2", "calls": "900",
             "images_per_s": images_per_s, "p99_ms": "40.0", "errors": "", "gateway_cpu_ms_per_image": cpu_ms,
             "mean_batch": "6.0", "stage_queue_wait_ms": queue_wait_ms, "stage_decode_ms": "0.5"}]
    if extra_series:
        rows.append(rows[0] | {"series": "two replicas"})
    _write_csv(folder / bench_baseline.SAMPLES, rows)
    _write_csv(folder / bench_baseline.GOALS, [{"goal": goal, "measured": "", "target": "", "met": met}
                                               for goal, met in goals.items()])
    return folder


def test_bench_rows_and_goals_are_compared_by_their_keys(tmp_path):
    base = _bench_run(tmp_path / "a", 400.0, 1.0, 1.0, {"batching on vs off (vs off, 64 in flight)": "True",
                                                        "the flood alone vs off": "True", "decode": "False"},
                      extra_series=False)
    now = _bench_run(tmp_path / "b", 300.0, 9.5, 2.9, {"batching on vs off (vs the other)": "False",
                                                       "decode": "True", "fairness": ""}, extra_series=True)
    assert bench_baseline.check(base / bench_baseline.SAMPLES) == base
    result = bench_baseline.compare_runs(now, base, TOL)
    # CPU per image by the percentage alone (+1.9 ms is within the 5 ms floor latencies get);
    # the stage column names where the time went but is not itself judged
    assert [(row.label, row.verdict) for row in result.rows] == [
        ("gateway, batching on @ 32", "**regressed**: images_per_s, gateway_cpu_ms_per_image"),
        ("two replicas @ 32", "new in this run")]
    assert result.where == ["gateway, batching on @ 32: stage_queue_wait_ms +8.50 ms"]
    assert [(goal, state) for goal, _, _, state in result.goals] == [
        ("batching on vs off (vs the other)", "regressed"), ("decode", "improved"), ("fairness", "new"),
        ("the flood alone vs off", "regressed")]
    assert result.regressions[-2:] == ["goal batching on vs off (vs the other): met before, missed now",
                                       "goal the flood alone vs off: met before, not in this run"]
    with pytest.raises(baseline.BaselineError, match="no such file"):
        bench_baseline.check(tmp_path / "missing")


METRICS = """\
gateway_stage_duration_seconds_count{model="fashion",stage="queue_wait"} %(n)s
gateway_stage_duration_seconds_sum{model="fashion",stage="queue_wait"} %(s)s
gateway_stage_duration_seconds_count{model="fashion",stage="decode"} %(n)s
gateway_stage_duration_seconds_sum{model="fashion",stage="decode"} 0.5
gateway_batch_size_count{model="fashion"} %(b)s
gateway_batch_size_sum{model="fashion"} %(n)s
gateway_queue_depth{model="fashion"} 2.0
gateway_backend_requests_total{code="OK",method="Predict"} %(b)s
gateway_backend_requests_total{code="OK",method="GetModelStatus"} 7.0
"""


def test_metrics_snapshots_summarize_what_the_gateway_spent():
    reads = [scrape.parse(METRICS % dict(n=n, s=s, b=b), at) for at, (n, s, b) in
             enumerate([(10, 0.1, 10), (60, 0.6, 30), (110, 1.1, 35)])]
    got = scrape.summarize(reads, requests=100)
    assert got["stages_ms"]["queue_wait"] == pytest.approx(10.0) and got["images"] == 100
    assert got["mean_batch"] == pytest.approx(4.0) and got["backend"]["by_code"] == {"OK": 25.0}
    assert got["queue_depth"] == {"mean": 2.0, "max": 2.0}  # from the read during the run
    assert "went from 60 to 10" in scrape.summarize(reads[1:2] + reads[:1])["error"]
    with pytest.raises(scrape.ScrapeError, match="no gateway metrics"):
        scrape.parse("process_cpu_seconds_total 1.0\n", 0)
