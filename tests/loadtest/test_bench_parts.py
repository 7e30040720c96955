"""The benchmark's own arithmetic, on made-up samples (its figures live in `make bench`, never here):
the profile's table from py-spy's stacks, samples.csv's CPU and stage columns, the goals (CPU,
request bytes, the two callers', the full photo upload's CPU per process, errors counted, never
dropped), the report of a run that measured little, the probes' window, an optional part that
fails, and the two-replica series' rounds merged into one row."""

from __future__ import annotations

import csv

import pytest

from loadtest import bench, bench_fairness, bench_fleet, bench_photos, bench_report, loadgen
from loadtest.bench_fairness import CallerFigures, FairnessResult
from loadtest.loadgen import LOADGEN_CPU, Sample
from loadtest.machine import describe
from loadtest.profile import top

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

STACKS = """\
<module> (/x/gateway/__main__.py:3);run (/usr/lib/python3.11/asyncio/runners.py:1);_run (gateway/core.py:10) 6
<module> (/x/gateway/__main__.py:3);run (/usr/lib/python3.11/asyncio/runners.py:1);_run (gateway/core.py:12) 2
<module> (/x/gateway/__main__.py:3);run (/usr/lib/python3.11/asyncio/runners.py:1) 1
_worker (/v/lib/python3.11/site-packages/PIL/ImageFile.py:9);load (/v/lib/python3.11/site-packages/PIL/ImageFile.py:20) 3
"""


def test_the_profile_table_counts_own_and_inclusive_samples_per_function():
    samples, entries = top(STACKS)
    assert samples == 12
    by_name = {e.function: e for e in entries}
    core = by_name["_run (gateway/core.py)"]   # two lines of one function merged
    assert (core.own, core.total) == (8, 8)
    assert (by_name["run (stdlib/asyncio/runners.py)"].own, by_name["run (stdlib/asyncio/runners.py)"].total) == (1, 9)
    assert by_name["load (PIL/ImageFile.py)"].own == 3
    assert entries[0] is core  # most own time first


def sample(series: str, calls: int, cpu: dict[str, float]) -> Sample:
    s = Sample(series, 32, 2, 2.0, 1, calls=calls, latencies_ms=[5.0] * calls)
    s.cpu_seconds.update(cpu)
    return s


def test_samples_csv_has_cpu_and_stage_columns_blank_where_not_measured(tmp_path):
    rows = [sample("gateway, batching on", 1000, {LOADGEN_CPU: 0.5, bench_report.CPU_GATEWAY: 1.2}),
            sample("direct", 500, {}), sample("none answered", 0, {})]
    rows[0].gateway_metrics.update({"mean batch": 6.5, "queue_wait ms": 1.25})
    bench_report.write_samples_csv(rows, tmp_path / "samples.csv")
    with (tmp_path / "samples.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [got[0][c] for c in bench_report.CPU_COLUMNS] == ["0.500", "1.200", ""]
    assert [got[1][c] for c in bench_report.CPU_COLUMNS] == ["", "", ""]
    assert (got[0]["mean_batch"], got[0]["stage_queue_wait_ms"]) == ("6.500", "1.250")
    assert (got[1]["stage_queue_wait_ms"], got[2]["p50_ms"]) == ("", "")


def result_of(*samples: Sample) -> bench_report.BenchResult:
    return bench_report.BenchResult(started="now", machine=describe(), settings={}, samples=list(samples))


def test_goals_with_failed_calls_are_missed_and_say_how_many():
    on, direct = sample(bench_report.SERIES_GATEWAY_ON, 300, {}), sample(bench_report.SERIES_DIRECT_BYTES, 310, {})
    on.errors = {"UNAVAILABLE": 3}
    found = bench_report.goals(result_of(on, direct))
    through = next(g for g in found if g.name.startswith("through the gateway vs"))
    assert through.met is False and through.measured.endswith("(3 errors)")  # 0.97×, but 3 calls failed


def test_request_bytes_are_judged_at_32_images_where_names_and_shape_no_longer_count():
    sizes = {1: {"uint8": 849, "float32": 3205, "pixels": 784}, 32: {"uint8": 25153, "float32": 100417,
                                                                     "pixels": 25088}}
    goal = bench_report.request_bytes_goal(sizes)
    assert goal.met is True and goal.measured.startswith("0.250× (25,153 vs 100,417 B); 0.265× for 1 image")
    assert "(32 images)" in goal.name and bench_report.request_bytes_goal({}).met is None


def test_a_run_with_no_successful_call_still_renders_with_every_goal_and_a_headline(tmp_path):
    result = result_of(sample(bench_report.SERIES_GATEWAY_ON, 0, {}), sample(bench_report.SERIES_DIRECT_BYTES, 0, {}))
    result.notes.append("The two-caller series: not measured, it failed: TimeoutExpired")
    assert bench_report.cost_note(result) is None  # no CPU per image to divide by
    found = bench_report.write(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert f"**{bench_report.headline(found)}**" in text and "it failed: TimeoutExpired" in text
    names = [g.name for g in found]
    assert bench_fairness.QUIET_NAME in names and bench_fairness.FLOOD_NAME in names  # not measured, not gone
    assert any(n.startswith("12 MP photos/s") for n in names) and bench_fleet.GOAL_NAME in names
    assert bench_report.headline([bench_report.Goal("a", "", "", True), bench_report.Goal("b", "", "", False),
                                  bench_report.Goal("c", "", "", None)]) == "1 met, 1 missed: b; 1 not measured."


def fairness(quiet_crowded: CallerFigures, flood_on: CallerFigures, quiet_alone_p50: float | None = 2.0):
    alone = CallerFigures(100 if quiet_alone_p50 else 0, 1.0, quiet_alone_p50, quiet_alone_p50)
    return FairnessResult({"fair queueing on": {"quiet alone": alone, "flood alone": flood_on,
                                                "quiet with flood": quiet_crowded},
                           "fair queueing off": {"flood alone": CallerFigures(1000, 1.0, 200.0, 400.0)}})


def test_fairness_goals_are_missed_not_dropped_when_a_caller_gets_no_answer():
    starved = CallerFigures(0, 1.0, None, None, {"RESOURCE_EXHAUSTED": 40})
    quiet, flood = bench_fairness.goals(fairness(starved, CallerFigures(0, 1.0, None, None)))
    assert quiet.met is False and "quiet refused 40" in quiet.measured
    assert flood.met is False and flood.measured.startswith("0.00×")
    quiet, flood = bench_fairness.goals(fairness(CallerFigures(50, 1.0, 6.0, 9.0, {"UNAVAILABLE": 1}),
                                                 CallerFigures(990, 1.0, 210.0, 420.0)))
    assert quiet.met is False and quiet.measured.startswith("3.0×")  # fast enough, but refused once
    assert flood.met is True
    quiet, _ = bench_fairness.goals(fairness(starved, CallerFigures(990, 1.0, 1.0, 1.0), quiet_alone_p50=None))
    assert quiet.met is None  # nothing to compare with: not measured
    assert [g.met for g in bench_fairness.goals(None)] == [None, None]


class Probe:
    def __init__(self, log: list, name: str, fail: str = ""):
        self.log, self.name, self.fail = log, name, fail

    def begin(self):
        self.log.append(f"begin {self.name}")
        if self.fail == "begin":
            raise OSError(f"{self.name} cannot begin")

    def end(self):
        self.log.append(f"end {self.name}")
        if self.fail == "end":
            raise OSError(f"{self.name} cannot end")


def test_every_probe_begun_is_ended_in_order_even_when_one_fails():
    log: list[str] = []
    with pytest.raises(OSError, match="b cannot begin"):
        with loadgen.probing([Probe(log, "a"), Probe(log, "b", fail="begin"), Probe(log, "c")]):
            log.append("window")
    assert log == ["begin a", "begin b", "end a", "end b"]
    log.clear()
    with pytest.raises(OSError, match="a cannot end"):
        with loadgen.probing([Probe(log, "a", fail="end"), Probe(log, "b")]):
            log.append("window")
    assert log == ["begin a", "begin b", "window", "end a", "end b"]


def test_an_optional_part_that_fails_becomes_a_note():
    result = result_of()

    def times_out():
        raise TimeoutError("flood did not answer")

    assert bench.optional(result, "the two-caller series", times_out) is None
    assert result.notes == ["The two-caller series: not measured, it failed: TimeoutError: flood did not answer"]
    assert bench.optional(result, "x", lambda: 7) == 7 and len(result.notes) == 1


def test_gateway_cpu_goals_against_the_limit_and_the_trivial_call():
    result = bench_report.BenchResult(started="", machine=None, settings={})
    result.trivial = sample(bench_report.SERIES_TRIVIAL, 2000, {bench_report.CPU_GATEWAY: 1.0})  # 0.5 ms a call
    on = sample(bench_report.SERIES_GATEWAY_ON, 1000, {bench_report.CPU_GATEWAY: 0.8})           # 0.8 ms an image
    absolute, relative = bench_report.cpu_goals(result, on, 32)
    assert absolute.met and absolute.measured == "0.80 ms"
    assert relative.met and relative.measured.startswith("1.60×")
    on.cpu_seconds[bench_report.CPU_GATEWAY] = 1.1
    assert [g.met for g in bench_report.cpu_goals(result, on, 32)] == [False, False]
    assert [g.met for g in bench_report.cpu_goals(result, None, 32)] == [None, None]


def test_the_two_replica_rounds_merge_into_one_row():
    rounds = [sample(bench_fleet.SERIES_ENDPOINTS, 600, {"gateway": 0.6}),
              sample(bench_fleet.SERIES_ENDPOINTS, 400, {"gateway": 0.4})]

    rounds[1].errors = {"UNAVAILABLE": 2}
    merged = bench_fleet.merged(rounds)
    assert (merged.calls, merged.seconds, merged.errors) == (1000, 4.0, {"UNAVAILABLE": 2})
    assert merged.images_per_s == 250 and merged.cpu_ms_per_image("gateway") == 1.0


def test_the_full_upload_goal_says_what_the_photo_costs_each_process():
    full = sample(bench_photos.SERIES_FULL, 64, {bench_report.CPU_GATEWAY: 2.56, bench_report.CPU_MODEL_SERVER: 0.32,
                                                 LOADGEN_CPU: 0.32})  # 40, 5 and 5 ms a photo; 32 photos/s
    result = bench_photos.PhotoResult(4_000_000, 700, 80_000, 30.0, cores=2, samples=[full])
    result.decode[1] = bench_report.DecodeRate(images=100, wall_s=4.0, cpu_s=4.0, source="")  # 25 a CPU-second
    goal = next(g for g in bench_photos.goals(result) if g.name == bench_photos.GOAL_DECODE[0])
    assert goal.met is False and goal.measured.startswith("0.64× (32.0 vs 2 × 25.0)")
    assert "the gateway reaches 1.00× the decode rate" in goal.measured
    assert "50 ms of CPU per photo (gateway 40, model server 5.0, load generator 5.0)" in goal.measured
    assert goal.measured.endswith("caps 2 shared cores at 40 photos/s")
    del full.cpu_seconds[LOADGEN_CPU]  # a process not measured: no breakdown, the figure stays
    assert [g.measured for g in bench_photos.goals(result) if g.name == bench_photos.GOAL_DECODE[0]] == \
        ["0.64× (32.0 vs 2 × 25.0)"]


def test_the_cpu_goal_also_compares_with_the_check_paced_to_the_same_rate_but_is_judged_as_stated():
    result = bench_report.BenchResult(started="", machine=None, settings={})
    result.trivial = sample(bench_report.SERIES_TRIVIAL, 2000, {bench_report.CPU_GATEWAY: 0.5})   # 0.25 ms a call
    result.trivial_paced = sample(bench_report.SERIES_TRIVIAL_PACED, 800, {bench_report.CPU_GATEWAY: 0.36})  # 0.45
    on = sample(bench_report.SERIES_GATEWAY_ON, 800, {bench_report.CPU_GATEWAY: 0.64})            # 0.8 ms an image
    relative = bench_report.cpu_goals(result, on, 32)[1]
    assert relative.met is False  # 3.2× the unpaced Check: the goal as stated
    assert relative.measured == ("3.20× (0.80 vs 0.25 ms); 1.78× against the Check paced to the same calls/s "
                                 "(400/s: 0.45 ms a call; the paced Check alone is 1.80× the Check)")
    assert bench_report._per_call_label(result.trivial_paced).endswith(", per call")
