"""A load-test run against an earlier one: the delta table per route, and which stage moved.

`compare(now, base, tolerance)` takes two runs' `verdict.json` records (loadtest/slo.py writes
them; loadtest/run.py adds the gateway's metrics and the settings) and judges every route, both
transports and the aggregate by the rules of loadtest/compare.py: p50/p95/p99 latency and the
failed-request share per row, throughput for the aggregate. The attribution line explains the
largest latency change with what the gateway measured of itself in both runs (loadtest/scrape.py):
mean time per image in each stage, mean batch size, queue depth, Predict calls and retries, CPU:

    all requests p95 +238 ms (mean +120 ms): queue_wait +98.5 ms per image (predict +3.1, ...);
    mean batch 1.3 → 2.0; queue depth 0.1 → 1.5 (max 4); ...

Also a command, to compare two finished runs without running anything:

    python -m loadtest.baseline reports/loadtest/B --baseline reports/loadtest/A

It exits 0 when nothing regressed beyond the tolerance, 1 when something did, 2 when a run's
files cannot be read. `load` raises BaselineError for a missing or unreadable record.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from loadtest import compare as cmp
from loadtest.slo import transport_of
from loadtest.summary import AGGREGATED

VERDICT_FILE = "verdict.json"
LATENCIES = ("p50", "p95", "p99")
MIN_STAGE_SHIFT_MS = 0.5  # a stage that moved less than this is not named as the cause
COLUMNS = [("requests", "requests"), ("p50", "p50 ms"), ("p95", "p95 ms"), ("p99", "p99 ms"),
           ("errors", "failed %"), ("rps", "req/s")]


class BaselineError(RuntimeError):
    """A run's verdict.json is missing or not one the load test wrote."""


def resolve(path: Path | str) -> Path:
    """A report folder or its verdict.json -> the verdict.json."""
    path = Path(path)
    return path / VERDICT_FILE if path.is_dir() else path


def load(path: Path | str) -> dict:
    """The verdict record at `path` (a report folder or a verdict.json). Raises BaselineError."""
    file = resolve(path)
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{file}: no such file (a load-test report folder or its {VERDICT_FILE})") from None
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{file}: cannot read it: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("requests"), list):
        raise BaselineError(f"{file}: not a load-test {VERDICT_FILE} (it has no per-request figures)")
    return record


def _key(row: Mapping) -> tuple[str, str]:
    return row.get("type", ""), row.get("name", "")


def _label(row: Mapping) -> str:
    if row.get("name") == AGGREGATED:
        return "all requests"
    if row.get("name", "").startswith("all "):  # the per-transport rows
        return row["name"]
    return f"{transport_of(row.get('type', ''))} {row.get('name', '')}"


def _rows(record: Mapping) -> dict[tuple[str, str], Mapping]:
    """Routes first, then each transport, then the aggregate: the order of the table."""
    rows = [r for r in record.get("requests", []) if r.get("name") != AGGREGATED]
    rows += list(record.get("transports", []))
    rows += [r for r in record.get("requests", []) if r.get("name") == AGGREGATED]
    return {_key(r): r for r in rows}


def _error_share(row: Mapping | None) -> float | None:
    if row is None or not row.get("requests"):
        return None
    return 100.0 * float(row.get("failures", 0)) / float(row["requests"])


def _row(key: tuple[str, str], now: Mapping | None, base: Mapping | None, tol: cmp.Tolerance) -> cmp.Row:
    some = now or base
    counts = [int(r.get("requests", 0)) for r in (now, base) if r is not None]
    judged = now is not None and base is not None and min(counts) >= tol.min_requests
    aggregate = key[1] == AGGREGATED

    def get(row: Mapping | None, field_: str) -> object:
        return None if row is None else row.get(field_)

    cells = [cmp.judge("requests", get(base, "requests"), get(now, "requests"), cmp.SHOWN, tol)]
    cells += [cmp.judge(m, get(base, f"{m}_ms"), get(now, f"{m}_ms"), cmp.LOWER_BETTER, tol, unit="ms",
                        judged=judged) for m in LATENCIES]
    cells.append(cmp.judge("errors", _error_share(base), _error_share(now), cmp.ERROR_SHARE, tol, unit="%",
                           judged=judged))
    cells.append(cmp.judge("rps", get(base, "rps"), get(now, "rps"),
                           cmp.HIGHER_BETTER if aggregate else cmp.SHOWN, tol, unit="req/s", judged=judged))
    note = ("only in the baseline" if now is None else "new in this run" if base is None
            else "" if judged else f"under {tol.min_requests} requests: not judged")
    return cmp.Row(_label(some), cells, note)


def _plus(value: float) -> str:
    """+1.5 / -1.5, and +0.0 rather than -0.0."""
    text = f"{value:+,.1f}"
    return "+0.0" if text == "-0.0" else text


def _fmt(value: float | None, spec: str = "{:,.1f}") -> str:
    return "–" if value is None else spec.format(value)


def _gateway_route(row: Mapping) -> str:
    """The gateway's own route label for a Locust request name (gateway/metrics.py labels)."""
    if transport_of(row.get("type", "")) == "grpc":
        return f"grpc {row.get('name', '')}"
    return f"http {row.get('type', '')} {row.get('name', '').split(' (')[0]}"


def _gateway_mean(gateway: Mapping, row: Mapping) -> float | None:
    """The gateway's own mean time for a row's requests: its route's, or over every classify
    route for a transport's row or the aggregate."""
    routes = gateway.get("routes") or {}
    name = row.get("name", "")
    if name != AGGREGATED and not name.startswith("all "):
        route = routes.get(_gateway_route(row))
        return None if route is None else route["mean_ms"]
    prefix = {"all grpc": "grpc ", "all rest": "http "}.get(name, "")
    chosen = [r for key, r in routes.items() if key.startswith(prefix)]
    count = sum(r["count"] for r in chosen)
    return sum(r["count"] * r["mean_ms"] for r in chosen) / count if count else None


def attribute(row_label: str, cell: cmp.Cell, now: Mapping, base: Mapping,
              now_row: Mapping | None, base_row: Mapping | None) -> tuple[str, str | None]:
    """The attribution line for one changed latency, and the stage it names (None if none)."""
    head = f"{row_label} {cell.metric} {cell.delta or 0:+,.0f} ms"
    if now_row and base_row and now_row.get("mean_ms") is not None and base_row.get("mean_ms") is not None:
        head += f" (mean {_plus(float(now_row['mean_ms']) - float(base_row['mean_ms']))} ms)"
    g_now, g_base = now.get("gateway") or {}, base.get("gateway") or {}
    missing = [f"{which}: {g.get('error', 'not recorded')}" for which, g in (("baseline", g_base), ("this run", g_now))
               if not g.get("stages_ms")]
    if missing:
        return f"{head}; no stage attribution, the gateway's metrics are missing ({'; '.join(missing)})", None
    deltas = {s: g_now["stages_ms"].get(s, 0.0) - g_base["stages_ms"].get(s, 0.0)
              for s in dict.fromkeys([*g_base["stages_ms"], *g_now["stages_ms"]])}
    ranked = sorted(deltas.items(), key=lambda kv: -abs(kv[1]))
    lead, shift = ranked[0]
    named = lead if abs(shift) >= MIN_STAGE_SHIFT_MS else None
    others = ", ".join(f"{s} {_plus(d)}" for s, d in ranked[1:])
    every = ", ".join(f"{s} {_plus(d)}" for s, d in ranked)
    if cell.state not in (cmp.REGRESSED, cmp.IMPROVED):
        parts = [f"{head}, within the tolerance; per image: {every} ms"]
        named = None
    elif named:
        parts = [f"{head}: {lead} {_plus(shift)} ms per image (other stages: {others} ms)"]
    else:
        parts = [f"{head}: no gateway stage moved by {MIN_STAGE_SHIFT_MS} ms per image or more ({every} ms), "
                 "so the change is outside them (transport, network, load generator)"]
    parts.append(f"mean batch {_fmt(g_base.get('mean_batch'))} → {_fmt(g_now.get('mean_batch'))}")
    q_base, q_now = g_base.get("queue_depth") or {}, g_now.get("queue_depth") or {}
    if q_base or q_now:
        parts.append(f"queue depth {_fmt(q_base.get('mean'))} → {_fmt(q_now.get('mean'))} "
                     f"(max {_fmt(q_base.get('max'), '{:,.0f}')} → {_fmt(q_now.get('max'), '{:,.0f}')})")

    def per_s(g: Mapping) -> float | None:
        return g["predict_calls"] / g["seconds"] if g.get("seconds") else None

    b_back, n_back = g_base.get("backend") or {}, g_now.get("backend") or {}
    parts.append(f"Predict calls {_fmt(per_s(g_base))} → {_fmt(per_s(g_now))}/s, errors "
                 f"{_fmt(b_back.get('errors'), '{:,.0f}')} → {_fmt(n_back.get('errors'), '{:,.0f}')}, retries "
                 f"{_fmt(b_back.get('retries'), '{:,.0f}')} → {_fmt(n_back.get('retries'), '{:,.0f}')}")
    parts.append(f"gateway CPU {_fmt(g_base.get('cpu_ms_per_request'), '{:,.2f}')} → "
                 f"{_fmt(g_now.get('cpu_ms_per_request'), '{:,.2f}')} ms per request")
    if now_row and base_row and now_row.get("mean_ms") is not None and base_row.get("mean_ms") is not None:
        inside_now, inside_base = _gateway_mean(g_now, now_row), _gateway_mean(g_base, base_row)
        if inside_now is not None and inside_base is not None:
            client = float(now_row["mean_ms"]) - float(base_row["mean_ms"])
            parts.append(f"time inside the gateway {_plus(inside_now - inside_base)} ms of the client's "
                         f"{_plus(client)} ms (means)")
    return "; ".join(parts), named


def _settings_notes(now: Mapping, base: Mapping) -> list[str]:
    s_now, s_base = now.get("settings") or {}, base.get("settings") or {}
    changed = [f"{k} {s_base.get(k, '–')} → {s_now.get(k, '–')}" for k in dict.fromkeys([*s_base, *s_now])
               if not k.startswith("slo") and str(s_base.get(k)) != str(s_now.get(k))]  # limits move no figure
    if not changed:
        return []
    return ["The runs differ in settings, so not every difference is the system's: " + "; ".join(changed) + "."]


@dataclass
class Comparison:
    baseline: str
    tolerance: cmp.Tolerance
    rows: list[cmp.Row]
    attribution: str | None = None
    stage: str | None = None  # the gateway stage the attribution names
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        return cmp.regression_lines(self.rows)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def markdown(self) -> list[str]:
        lines = [cmp.headline(self.baseline, self.passed, self.tolerance, markdown=True), "",
                 *cmp.table(self.rows, "route", COLUMNS), ""]
        if self.attribution:
            lines += [f"**Where it moved:** {self.attribution}", ""]
        lines += [f"- regressed: {line}" for line in self.regressions]
        lines += [f"- {note}" for note in self.notes]
        return lines

    def console(self) -> str:
        lines = [cmp.headline(self.baseline, self.passed, self.tolerance, markdown=False),
                 *cmp.table(self.rows, "route", COLUMNS)]
        if self.attribution:
            lines.append(f"  where it moved: {self.attribution}")
        lines += [f"  regressed: {line}" for line in self.regressions]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "passed": self.passed, "regressions": self.regressions,
                "attribution": self.attribution, "stage": self.stage, "notes": self.notes,
                "tolerance": asdict(self.tolerance)}


def compare(now: Mapping, base: Mapping, tol: cmp.Tolerance, baseline: str = "") -> Comparison:
    now_rows, base_rows = _rows(now), _rows(base)
    keys = list(dict.fromkeys([*now_rows, *base_rows]))
    rows = [_row(k, now_rows.get(k), base_rows.get(k), tol) for k in keys]
    result = Comparison(baseline, tol, rows, notes=_settings_notes(now, base))
    # Explain the aggregate's p95 unless it held while some route's latency regressed: then the
    # largest of those.
    aggregate = next((k for k in keys if k[1] == AGGREGATED), None)
    key, cell = aggregate, rows[keys.index(aggregate)].cell("p95") if aggregate is not None else None
    if cell is None or cell.state != cmp.REGRESSED:
        candidates = [(c.delta or 0.0, k, c) for k, row in zip(keys, rows) for c in row.regressions if c.unit == "ms"]
        if candidates:
            _, key, cell = max(candidates, key=lambda c: c[0])
    if key is not None and cell is not None and cell.delta is not None:
        result.attribution, result.stage = attribute(rows[keys.index(key)].label, cell, now, base,
                                                     now_rows.get(key), base_rows.get(key))
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.baseline",
        description="Compare a finished load-test run with an earlier one: delta table per route, the "
                    "stage that moved; exit 1 on a regression beyond the tolerance, 2 on unreadable files.")
    parser.add_argument("run", metavar="RUN", help="the run to judge: a report folder or its verdict.json")
    parser.add_argument("--baseline", required=True, metavar="PATH",
                        help="the earlier run: a report folder or its verdict.json")
    cmp.add_arguments(parser, what="", ms_default=cmp.Tolerance.ms, baseline=False)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tol = cmp.tolerance_of(args)
        now, base = load(args.run), load(args.baseline)
    except (BaselineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = compare(now, base, tol, str(resolve(args.baseline)))
    print(result.console())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
