"""Judging figures against a baseline's: tolerances, one judged cell per figure, the delta table.

Shared by the load test's baseline (loadtest/baseline.py) and the benchmark's
(loadtest/bench_baseline.py), so both print the same table and judge by the same rules:

* a latency (lower is better) regressed when it grew by more than `percent` of the baseline's
  AND by more than `ms` milliseconds (small figures jitter by whole milliseconds); a cost per
  image (unit `ms/img`, CPU time) by the percentage alone;
* a rate (higher is better) regressed when it fell by more than `percent`;
* a failed-request share regressed when it grew by more than `error_points` percentage points;
* a row with fewer than `min_requests` requests on either side is shown, not judged.

The same rules in reverse name an improvement. Pure functions: no I/O.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

LOWER_BETTER, HIGHER_BETTER, ERROR_SHARE, SHOWN = "lower", "higher", "errors", "shown"
REGRESSED, IMPROVED, SAME, NOT_JUDGED = "regressed", "improved", "same", "not judged"


@dataclass(frozen=True)
class Tolerance:
    percent: float = 20.0
    ms: float = 5.0
    error_points: float = 1.0
    min_requests: int = 20

    def describe(self) -> str:
        return (f"latency ±{self.percent:g} % and ±{self.ms:g} ms, throughput ±{self.percent:g} %, "
                f"failed requests +{self.error_points:g} points; rows under {self.min_requests} requests "
                "not judged")


def add_arguments(parser: argparse.ArgumentParser, *, what: str, ms_default: float,
                  min_requests_default: int = 20, baseline: bool = True) -> None:
    """--baseline (unless `baseline=False`) and the tolerance flags, with their defaults."""
    group = parser.add_argument_group("comparison with a baseline run")
    if baseline:
        group.add_argument("--baseline", default=None, metavar="PATH",
                           help=f"an earlier run to compare with: {what}; prints a delta table and exits 1 "
                                "on a regression beyond the tolerance (default: no comparison)")
    group.add_argument("--tolerance-percent", type=float, default=20.0, metavar="PERCENT",
                       help="a latency must grow, or a throughput fall, by more than this share of the "
                            "baseline's to count as a regression (default: %(default)s)")
    group.add_argument("--tolerance-ms", type=float, default=ms_default, metavar="MS",
                       help="... and a latency also by more than this many ms (default: %(default)s)")
    group.add_argument("--tolerance-error-points", type=float, default=1.0, metavar="POINTS",
                       help="the share of failed requests may grow by this many percentage points "
                            "(default: %(default)s)")
    group.add_argument("--baseline-min-requests", type=int, default=min_requests_default, metavar="N",
                       help="rows with fewer requests on either side are shown, not judged "
                            "(default: %(default)s)")


def tolerance_of(args: argparse.Namespace) -> Tolerance:
    """The Tolerance of parsed arguments. Raises ValueError on a negative value."""
    tol = Tolerance(args.tolerance_percent, args.tolerance_ms, args.tolerance_error_points,
                    args.baseline_min_requests)
    if min(tol.percent, tol.ms, tol.error_points, tol.min_requests) < 0:
        raise ValueError("--tolerance-percent, --tolerance-ms, --tolerance-error-points and "
                         "--baseline-min-requests must be >= 0")
    return tol


def _number(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class Cell:
    """One figure, baseline and now, judged."""

    metric: str
    base: float | None
    now: float | None
    direction: str
    state: str
    unit: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.now is None else self.now - self.base

    def _fmt(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.unit == "%":
            return f"{value:,.2f}"
        if self.unit == "ms":
            return f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"
        if self.unit == "ms/img":  # CPU per image: fractions of a millisecond matter
            return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
        if self.unit:  # rates
            return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:,.0f}"  # counts

    def _signed(self, value: float) -> str:
        shown = self._fmt(abs(value))
        return ("-" if value < 0 and shown.strip("0.,") else "+") + shown

    def text(self) -> str:
        """`12 -> 250 (+238)`, bold when it regressed."""
        if self.base is None and self.now is None:
            return "–"
        shown = f"{self._fmt(self.base)} → {self._fmt(self.now)}"
        if self.delta is not None:
            shown += f" ({self._signed(self.delta)})"
        return f"**{shown}**" if self.state == REGRESSED else shown

    def describe(self) -> str:
        """For a line of text: `p95 12 → 250 ms (+238 ms, +1,983 %)`."""
        unit = f" {self.unit}" if self.unit else ""
        text = f"{self.metric} {self._fmt(self.base)} → {self._fmt(self.now)}{unit}"
        if self.delta is not None:
            text += f" ({self._signed(self.delta)}{unit}"
            if self.base and self.direction != ERROR_SHARE:
                text += f", {100.0 * self.delta / self.base:+,.0f} %"
            text += ")"
        return text


def judge(metric: str, base: object, now: object, direction: str, tol: Tolerance, *, unit: str = "",
          judged: bool = True) -> Cell:
    b, n = _number(base), _number(now)
    state = NOT_JUDGED
    if judged and b is not None and n is not None and direction != SHOWN:
        d = n - b
        if direction == LOWER_BETTER:
            margin = max(abs(b) * tol.percent / 100.0, tol.ms if unit == "ms" else 0.0)
            state = REGRESSED if d > margin else IMPROVED if -d > margin else SAME
        elif direction == HIGHER_BETTER:
            margin = abs(b) * tol.percent / 100.0
            state = REGRESSED if -d > margin else IMPROVED if d > margin else SAME
        elif direction == ERROR_SHARE:
            state = REGRESSED if d > tol.error_points else IMPROVED if -d > tol.error_points else SAME
    return Cell(metric, b, n, direction, state, unit)


@dataclass
class Row:
    label: str
    cells: list[Cell] = field(default_factory=list)
    note: str = ""  # e.g. "only in the baseline", "12 requests: not judged"

    def cell(self, metric: str) -> Cell | None:
        return next((c for c in self.cells if c.metric == metric), None)

    @property
    def regressions(self) -> list[Cell]:
        return [c for c in self.cells if c.state == REGRESSED]

    @property
    def verdict(self) -> str:
        if self.note:
            return self.note
        worse = [c.metric for c in self.regressions]
        better = [c.metric for c in self.cells if c.state == IMPROVED]
        if worse:
            return "**regressed**: " + ", ".join(worse)
        return "improved: " + ", ".join(better) if better else "ok"


def table(rows: Sequence[Row], first: str, metrics: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown: one line per row, one column per (metric, heading), then the row's verdict."""
    lines = [f"| {first} | " + " | ".join(heading for _, heading in metrics) + " | |",
             "|---|" + "---:|" * len(metrics) + "---|"]
    for row in rows:
        cells = [(row.cell(metric).text() if row.cell(metric) else "–") for metric, _ in metrics]
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {row.verdict} |")
    return lines


def headline(baseline: str, passed: bool, tol: Tolerance, *, markdown: bool) -> str:
    """The comparison's first line: against what, the outcome, the tolerance."""
    if markdown:
        return (f"Against `{baseline}`: **{'no regression' if passed else 'REGRESSED'}** "
                f"(tolerance: {tol.describe()}). Each cell: baseline → this run (change).")
    return f"baseline: {'PASS' if passed else 'REGRESSED'} against {baseline} ({tol.describe()})"


def regression_lines(rows: Iterable[Row]) -> list[str]:
    """One line per regressed row naming each figure beyond the tolerance, for the console and
    the exit message."""
    return [f"{row.label}: " + "; ".join(cell.describe() for cell in row.regressions)
            for row in rows if row.regressions]
