"""`make bench ARGS="--baseline DIR"`: this benchmark run against an earlier one.

Compares the two runs' `samples.csv` row by row and their `goals.csv` goal by goal, by the rules
of loadtest/compare.py (the load test's baseline uses the same), and appends the delta table to
this run's report.md. Generic on purpose, so new series and new columns need no change here:

* rows are matched on `series`, `concurrency` and any other text column; rows on one side only
  are listed, not judged;
* a numeric column ending in `_per_s` is a rate (higher is better), one containing `_ms` a
  latency (lower is better), `errors` (`CODE=n;...`) the failed share of `calls`; other columns
  (settings such as `processes`) are not compared;
* goals are matched by name, parenthesised details aside; one met in the baseline and missed now
  is a regression;
* for a regressed row, the latency column other than the percentiles that grew most (a stage
  column, once samples.csv has them) is named as where the time went.

`check` raises BaselineError for a baseline that cannot be read, before the benchmark starts.
"""

from __future__ import annotations

import argparse
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from loadtest import compare as cmp
from loadtest.baseline import BaselineError

SAMPLES, GOALS, REPORT = "samples.csv", "goals.csv", "report.md"
KEY_COLUMNS = ("series", "concurrency")
ERRORS, CALLS = "errors", "calls"
PERCENTILE = re.compile(r"^p\d+(\.\d+)?_ms$")


def folder_of(path: Path | str) -> Path:
    """A bench report folder, or a samples.csv / goals.csv in it -> the folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check(path: Path | str) -> Path:
    """The baseline's folder, once its samples.csv is known to be readable. Raises BaselineError."""
    if not Path(path).exists():
        raise BaselineError(f"{path}: no such file or folder (a bench report folder or its {SAMPLES})")
    folder = folder_of(path)
    samples = folder / SAMPLES
    try:
        rows = _read(samples)
    except FileNotFoundError:
        raise BaselineError(f"{samples}: no such file (a bench report folder or its {SAMPLES})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BaselineError(f"{samples}: cannot read it: {exc}") from None
    if rows and not set(KEY_COLUMNS) <= set(rows[0]):
        raise BaselineError(f"{samples}: not a bench {SAMPLES} (no {' and '.join(KEY_COLUMNS)} columns)")
    return folder


def direction(column: str) -> str | None:
    if column.endswith("_per_s"):
        return cmp.HIGHER_BETTER
    if "_ms" in column:
        return cmp.LOWER_BETTER
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def key_columns(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        return list(KEY_COLUMNS)
    text = [c for c in rows[0] if c != ERRORS and direction(c) is None
            and any(r.get(c) and not _is_number(r[c]) for r in rows)]
    return list(dict.fromkeys([*(c for c in KEY_COLUMNS if c in rows[0]), *text]))


def error_count(text: str | None) -> int:
    """`UNAVAILABLE=3;DEADLINE_EXCEEDED=1` -> 4; `0` or empty -> 0."""
    total = 0
    for part in (text or "").split(";"):
        _, _, n = part.rpartition("=")
        if n.strip().isdigit():
            total += int(n)
    return total


def _error_share(row: Mapping[str, str] | None) -> float | None:
    if row is None or ERRORS not in row or not _is_number(row.get(CALLS, "")):
        return None
    errors, calls = error_count(row[ERRORS]), float(row[CALLS])
    return 100.0 * errors / (calls + errors) if calls + errors else 0.0


def _where(now: Mapping[str, str], base: Mapping[str, str]) -> str | None:
    """The non-percentile latency column that grew most, e.g. a gateway stage."""
    grown = []
    for column in now:
        if direction(column) == cmp.LOWER_BETTER and not PERCENTILE.match(column):
            if _is_number(now.get(column, "")) and _is_number(base.get(column, "")):
                grown.append((float(now[column]) - float(base[column]), column))
    if not grown:
        return None
    delta, column = max(grown)
    return f"{column} {delta:+,.2f} ms" if delta > 0 else None


@dataclass
class BenchComparison:
    baseline: str
    tolerance: cmp.Tolerance
    rows: list[cmp.Row]
    metrics: list[tuple[str, str]]
    goals: list[tuple[str, str, str, str]] = field(default_factory=list)  # goal, before, now, state
    where: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        lines = cmp.regression_lines(self.rows)
        return lines + [f"goal {goal}: met before, {now} now" for goal, _, now, state in self.goals
                        if state == cmp.REGRESSED]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def markdown(self) -> list[str]:
        lines = [cmp.headline(self.baseline, self.passed, self.tolerance, markdown=True), "",
                 *cmp.table(self.rows, "series @ in flight", self.metrics), ""]
        if self.goals:
            lines += ["| goal | baseline | this run | |", "|---|---|---|---|",
                      *[f"| {g} | {b} | {n} | {'**regressed**' if s == cmp.REGRESSED else s} |"
                        for g, b, n, s in self.goals], ""]
        lines += [f"- where it moved: {w}" for w in self.where]
        lines += [f"- regressed: {r}" for r in self.regressions]
        return lines

    def console(self) -> str:
        return "\n".join([cmp.headline(self.baseline, self.passed, self.tolerance, markdown=False),
                          *self.markdown()[2:]])


def _met(value: str | None) -> str:
    return {"True": "met", "False": "missed"}.get(value or "", "not measured")


def goal_key(name: str) -> str:
    """A goal's name without its parenthesised details, which may name what was measured."""
    return " ".join(re.sub(r"\([^)]*\)", "", name).split())


def compare_goals(now: Sequence[Mapping[str, str]], base: Sequence[Mapping[str, str]]) -> list[tuple]:
    before = {goal_key(g["goal"]): g.get("met") for g in base}
    out = []
    for g in now:
        key = goal_key(g["goal"])
        was, now_met = before.get(key), g.get("met")
        state = (cmp.REGRESSED if was == "True" and now_met == "False" else
                 cmp.IMPROVED if was == "False" and now_met == "True" else
                 "new" if key not in before else cmp.SAME)
        out.append((g["goal"], _met(was) if key in before else "–", _met(now_met), state))
    return out


def compare_runs(now_dir: Path, base_dir: Path, tol: cmp.Tolerance) -> BenchComparison:
    now, base = _read(now_dir / SAMPLES), _read(base_dir / SAMPLES)
    keys = key_columns(now or base)
    header = list(now[0] if now else base[0] if base else [])
    columns = [c for c in header if direction(c) is not None]

    def key(row: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(row.get(k, "") for k in keys)

    now_rows, base_rows = {key(r): r for r in now}, {key(r): r for r in base}
    rows, where = [], []
    for k in dict.fromkeys([*now_rows, *base_rows]):
        n, b = now_rows.get(k), base_rows.get(k)
        calls = [float(r[CALLS]) for r in (n, b) if r is not None and _is_number(r.get(CALLS, ""))]
        judged = n is not None and b is not None and (not calls or min(calls) >= tol.min_requests)
        cells = [cmp.judge(c, b and b.get(c), n and n.get(c), direction(c), tol,
                           unit="ms" if direction(c) == cmp.LOWER_BETTER else "/s", judged=judged)
                 for c in columns]
        cells.append(cmp.judge(ERRORS, _error_share(b), _error_share(n), cmp.ERROR_SHARE, tol, unit="%",
                               judged=judged))
        note = ("only in the baseline" if n is None else "new in this run" if b is None
                else "" if judged else f"under {tol.min_requests} calls: not judged")
        label = " @ ".join(v for v in k if v)
        row = cmp.Row(label, cells, note)
        rows.append(row)
        if row.regressions and n is not None and b is not None and (moved := _where(n, b)):
            where.append(f"{label}: {moved}")
    goals = []
    if (now_dir / GOALS).exists() and (base_dir / GOALS).exists():
        goals = compare_goals(_read(now_dir / GOALS), _read(base_dir / GOALS))
    metrics = [(c, c.replace("_", " ")) for c in columns] + [(ERRORS, "failed %")]
    return BenchComparison(str(base_dir), tol, rows, metrics, goals, where)


def report(report_dir: Path, args: argparse.Namespace) -> int:
    """Compare the finished run in `report_dir` with `args.baseline`, print the table, append it to
    report.md; 0 when nothing regressed, 1 otherwise."""
    result = compare_runs(report_dir, folder_of(args.baseline), cmp.tolerance_of(args))
    print(result.console())
    with (report_dir / REPORT).open("a", encoding="utf-8") as f:
        f.write("\n".join(["", "## Against the baseline", "", *result.markdown(), ""]))
    return 0 if result.passed else 1
