"""`make bench ARGS="--baseline DIR"`: this benchmark run against an earlier one.

Compares the two runs' `samples.csv` row by row and their `goals.csv` goal by goal, by the rules
of loadtest/compare.py (the load test's baseline uses the same), and appends the delta table to
this run's report.md. Generic on purpose, so new series and new columns need no change here:

* rows are matched on `series`, `concurrency` and any other text column; rows on one side only
  are listed, not judged;
* a numeric column ending in `_per_s` is a rate (higher is better); one ending in `_per_image`
  (the CPU columns) a cost, lower is better, judged by the percentage alone (a millisecond floor
  would hide a CPU cost that tripled); any other containing `_ms` a latency (lower is better, by
  the percentage and the `ms` floor); `errors` (`CODE=n;...`) the failed share of `calls`; the
  gateway's stage columns (`stage_<stage>_ms`) and other columns (`mean_batch`, settings such as
  `processes`) are shown where useful but not judged;
* goals are matched by name, parenthesised details aside; one met in the baseline and missed,
  not measured or absent now is a regression; goals on one side only are listed;
* for a regressed row, the stage column that grew most (from the gateway's /metrics) is named as
  where the time went; runs without stage columns name none.

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


PER_IMAGE, STAGE = "_per_image", "stage_"


def direction(column: str) -> str | None:
    """How a samples.csv column is judged: a rate, a cost or latency, or (None) not at all."""
    if column.endswith("_per_s"):
        return cmp.HIGHER_BETTER
    if column.startswith(STAGE):
        return None  # explains a regression (`_where`), is not one
    if column.endswith(PER_IMAGE) or "_ms" in column:
        return cmp.LOWER_BETTER
    return None


def unit(column: str) -> str:
    """The unit a judged column is compared in; only `ms` brings the tolerance's millisecond floor."""
    if column.endswith(PER_IMAGE):
        return "ms/img"
    return "ms" if direction(column) == cmp.LOWER_BETTER else "/s"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def key_columns(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        return list(KEY_COLUMNS)
    text = [c for c in rows[0] if c != ERRORS and direction(c) is None and not c.startswith(STAGE)
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
    """The gateway stage column (`stage_<stage>_ms`) that grew most; CPU columns are costs, not time."""
    grown = []
    for column in now:
        if column.startswith(STAGE) and column.endswith("_ms"):
            if _is_number(now.get(column) or "") and _is_number(base.get(column) or ""):
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
        return lines + [f"goal {goal}: met before, {now} now" if now != ABSENT else f"goal {goal}: met before, {now}"
                        for goal, _, now, state in self.goals if state == cmp.REGRESSED]

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


ABSENT = "not in this run"


def compare_goals(now: Sequence[Mapping[str, str]], base: Sequence[Mapping[str, str]]) -> list[tuple]:
    """(goal, before, now, state) for every goal of either run: met before and anything but met
    now (missed, not measured, absent) is a regression."""
    before = {goal_key(g["goal"]): g for g in base}
    current = {goal_key(g["goal"]): g for g in now}
    out = []
    for key in dict.fromkeys([*current, *before]):
        n, b = current.get(key), before.get(key)
        was, is_ = b and b.get("met"), n and n.get("met")
        state = (cmp.REGRESSED if was == "True" and is_ != "True" else
                 cmp.IMPROVED if was == "False" and is_ == "True" else
                 "new" if b is None else "only in the baseline" if n is None else cmp.SAME)
        out.append(((n or b)["goal"], "–" if b is None else _met(was), ABSENT if n is None else _met(is_), state))
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
        cells = [cmp.judge(c, b and b.get(c), n and n.get(c), direction(c), tol, unit=unit(c), judged=judged)
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
