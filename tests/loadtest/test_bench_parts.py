"""The benchmark's own arithmetic, on made-up samples (its figures live in `make bench`, never here):
the profile's table from py-spy's stacks, samples.csv's CPU columns, the CPU goals, and the
two-replica series' rounds merged into one row."""

from __future__ import annotations

import csv

from loadtest import bench_fleet, bench_report
from loadtest.loadgen import LOADGEN_CPU, Sample
from loadtest.profile import top
import pytest

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


def test_samples_csv_has_cpu_per_image_columns_blank_where_not_measured(tmp_path):
    rows = [sample("gateway, batching on", 1000, {LOADGEN_CPU: 0.5, bench_report.CPU_GATEWAY: 1.2}),
            sample("direct", 500, {})]
    bench_report.write_samples_csv(rows, tmp_path / "samples.csv")
    with (tmp_path / "samples.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [got[0][c] for c in bench_report.CPU_COLUMNS] == ["0.500", "1.200", ""]
    assert [got[1][c] for c in bench_report.CPU_COLUMNS] == ["", "", ""]


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
