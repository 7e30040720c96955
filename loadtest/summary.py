"""The one-page Markdown summary of a load-test run (`summary.md` beside Locust's HTML and CSV).

Built from what the run left on disk: the verdict JSON written by the locustfile's quitting
listener and Locust's CSV files (`<prefix>_stats.csv`, `_stats_history.csv`, `_failures.csv`), so
it describes exactly the run the HTML report shows; plus what loadtest/run.py hands it: the plots
drawn beside it (loadtest/plots.py), the comparison with a baseline run (loadtest/baseline.py) and
the gateway's own metrics (loadtest/scrape.py). Sections, in the order a reader asks: verdict
(aggregate and per route/transport), against the baseline, over time, requests, callers, inside
the gateway, by stage, failures, settings, machine, files.

The "callers" section (when the gateway's metrics were read, or the run was `--callers
quiet-flood`) has one row per caller the gateway saw: images queued, mean queue wait, queue depth,
images refused; and, for a quiet-flood run, the client's p50/p95 of each caller's Classify calls,
whether the quiet caller was refused, and how its latency compares with the flood's.

The "by stage" table turns the stats history into one row per stretch of constant user count:
throughput from the growth of the request counter over the stretch, p95 from Locust's 10-second
window at its end. With the step shape, it shows the knee: where more users stop buying throughput.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from loadtest import options
from loadtest.machine import Machine

AGGREGATED = "Aggregated"
KNEE_GAIN = 1.10  # a stage "still scales" while throughput grows by at least 10 %
MIN_STAGE_SAMPLES = 3  # shorter stretches are ramps between stages


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class Stage:
    users: int
    seconds: float
    rps: float
    failures: int
    p95_ms: str
    start: float = 0.0  # Unix times of the stretch's first and last history row
    end: float = 0.0


def stages(history: Iterable[Mapping[str, str]]) -> list[Stage]:
    """One Stage per run of consecutive Aggregated history rows with the same user count."""
    rows = [r for r in history if r.get("Name") == AGGREGATED]
    groups: list[list[Mapping[str, str]]] = []
    for row in rows:
        if groups and groups[-1][0]["User Count"] == row["User Count"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    out = []
    previous_end: Mapping[str, str] | None = None
    for group in groups:
        start = previous_end or group[0]
        end = group[-1]
        previous_end = end
        if len(group) < MIN_STAGE_SAMPLES or group[0]["User Count"] == "0":
            continue
        seconds = float(end["Timestamp"]) - float(start["Timestamp"])
        if seconds <= 0:
            continue
        requests = int(end["Total Request Count"]) - int(start["Total Request Count"])
        failures = int(end["Total Failure Count"]) - int(start["Total Failure Count"])
        out.append(Stage(int(end["User Count"]), seconds, requests / seconds, failures, end.get("95%", "N/A"),
                         float(start["Timestamp"]), float(end["Timestamp"])))
    return out


def knee(found: Sequence[Stage]) -> Stage | None:
    """The last stage whose throughput grew by KNEE_GAIN over the one before; None if all did."""
    for before, after in zip(found, found[1:]):
        if after.users > before.users and after.rps < before.rps * KNEE_GAIN:
            return before
    return None


def _ms(value: str | float) -> str:
    try:
        return f"{float(value):,.0f}"
    except ValueError:
        return value or "n/a"


def request_row(entry, type_: str, name: str) -> dict:
    """One row of final figures from a Locust `StatsEntry`."""
    return {"type": type_, "name": name, "requests": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5) or 0,
            "p95_ms": entry.get_response_time_percentile(0.95) or 0,
            "p99_ms": entry.get_response_time_percentile(0.99) or 0, "max_ms": entry.max_response_time or 0,
            "mean_ms": entry.avg_response_time or 0, "rps": entry.total_rps}


def final_requests(stats) -> list[dict]:
    """Per-request-name figures at the end of the run, from Locust's `RequestStats`.

    Written beside the verdict by the locustfile's quitting listener: Locust's own CSV is
    rewritten once a second and can miss the last requests, this cannot.
    """
    entries = sorted(stats.entries.values(), key=lambda e: (e.method or "", e.name)) + [stats.total]
    return [request_row(e, e.method or "", e.name) for e in entries]


def requests_from_csv(rows: Sequence[Mapping[str, str]]) -> list[dict]:
    """The same figures from Locust's stats CSV, for a run that ended before its verdict."""
    return [{"type": r["Type"], "name": r["Name"], "requests": int(r["Request Count"]),
             "failures": int(r["Failure Count"]), "p50_ms": r["50%"], "p95_ms": r["95%"], "p99_ms": r["99%"],
             "max_ms": r["Max Response Time"], "rps": float(r["Requests/s"])} for r in rows]


MULTI_IMAGE_RPCS = ("ClassifyBatch", "ClassifyStream")


def images_per_second(rows: Sequence[Mapping], batch_images: int) -> float:
    """Images classified per second: batch and stream calls carry `batch_images` images each."""
    total = 0.0
    for r in rows:
        if r["name"] == AGGREGATED:
            continue
        if r["name"] in MULTI_IMAGE_RPCS:
            total += r["rps"] * batch_images
        elif "classify" in r["name"].lower():
            total += r["rps"]
    return total


def requests_table(rows: Sequence[Mapping]) -> list[str]:
    if not rows:
        return ["No statistics were written."]
    lines = ["| type | name | requests | failures | p50 ms | p95 ms | p99 ms | max ms | req/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['type']} | {r['name']} | {r['requests']:,} | {r['failures']:,} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | {r['rps']:,.1f} |")
    return lines


def stages_table(found: Sequence[Stage], windows: Sequence[Mapping[str, float]] = ()) -> list[str]:
    """One row per load stage; with `windows` (the gateway's stage means per load stage, from
    loadtest/scrape.py `window`), its time per image in each stage too."""
    if not found:
        return ["(the run was too short for stable stages)"]
    best = knee(found)
    names = list(dict.fromkeys(k for w in windows for k in w))
    lines = ["| users | seconds | req/s | failures | p95 ms (last 10 s) |"
             + "".join(f" {n} ms/img |" for n in names),
             "|---:|---:|---:|---:|---:|" + "---:|" * len(names)]
    for i, s in enumerate(found):
        mark = " ← knee" if s is best else ""
        window = windows[i] if i < len(windows) else {}
        lines.append(f"| {s.users} | {s.seconds:.0f} | {s.rps:,.1f}{mark} | {s.failures:,} | {_ms(s.p95_ms)} |"
                     + "".join(f" {window[n]:,.1f} |" if n in window else " – |" for n in names))
    if best is not None:
        lines.append("")
        lines.append(f"Throughput stops growing by {KNEE_GAIN - 1:.0%} per stage after {best.users} users "
                     f"(≈ {best.rps:,.0f} req/s): more users beyond that mostly add latency.")
    return lines


def failures_table(failures: Sequence[Mapping[str, str]], limit: int = 10) -> list[str]:
    if not failures:
        return ["None."]
    rows = sorted(failures, key=lambda r: -int(r["Occurrences"]))[:limit]
    lines = ["| count | request | error |", "|---:|---|---|"]
    for r in rows:
        error = r["Error"].replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {int(r['Occurrences']):,} | {r['Method']} {r['Name']} | {error} |")
    if len(failures) > limit:
        lines.append(f"\n… and {len(failures) - limit} more kinds in the failures CSV.")
    return lines


def verdict_lines(verdict: Mapping | None, exit_code: int | None) -> list[str]:
    if verdict is None:
        return [f"**NO VERDICT**: Locust ended before judging the run (it failed to start, crashed or hung; "
                f"exit code {exit_code}: the run broke); see locust.log."]
    m, limits = verdict["measured"], verdict["limits"]

    def limit(key: str, fmt: str) -> str:
        return "not set" if limits.get(key) is None else fmt.format(limits[key])

    lines = [
        f"**{'PASS' if verdict['passed'] else 'FAIL'}** (exit code {exit_code})",
        "",
        "| all requests | measured | limit |",
        "|---|---:|---:|",
        f"| p95 latency | {m['p95_ms']:,.0f} ms | {limit('p95_ms', '≤ {:g} ms')} |",
        f"| p99 latency | {m['p99_ms']:,.0f} ms | {limit('p99_ms', '≤ {:g} ms')} |",
        f"| failed requests | {m['error_percent']:.2f} % ({m['failures']:,} of {m['requests']:,}) | "
        f"{limit('max_error_percent', '≤ {:g} %')} |",
        f"| throughput | {m['rps']:,.1f} req/s | {limit('min_rps', '≥ {:g} req/s')} |",
    ]
    rules = verdict.get("slos") or []
    if rules:
        lines += ["", "| route / transport | limit | measured | |", "|---|---|---:|---|"]
        for rule in rules:
            who = " ".join(p for p in (rule.get("transport"), rule.get("route")) if p) or "all requests"
            if not rule.get("measured"):
                limits = rule["rule"].partition(": ")[2].replace("<=", "≤").replace(">=", "≥")
                lines.append(f"| {who} | {limits or '–'} | no requests | **missed** |")
                continue
            for lim in rule["limits"]:
                unit = {"errors": " %", "rps": " req/s"}.get(lim["metric"], " ms")
                lines.append(f"| {who} | {lim['describe'].replace('<=', '≤').replace('>=', '≥')} | "
                             f"{lim['measured']:,.4g}{unit} | {'held' if lim['held'] else '**missed**'} |")
    if verdict["misses"]:
        lines += ["", "Missed:"] + [f"- {miss}" for miss in verdict["misses"]]
    return lines


def _num(value: float | None, spec: str = "{:,.1f}") -> str:
    return "–" if value is None else spec.format(value)


def gateway_lines(gateway: Mapping | None) -> list[str]:
    """What the gateway measured of itself during the run (loadtest/scrape.py `summarize`)."""
    if not gateway:
        return ["Not read (`--metrics-url none`)."]
    if gateway.get("error"):
        return [f"Unavailable: {gateway['error']} (from {gateway.get('url') or 'the gateway'})."]
    stages = gateway.get("stages_ms") or {}
    lines = ["| stage | mean ms per image |", "|---|---:|", *[f"| {k} | {v:,.2f} |" for k, v in stages.items()], ""]
    q, inflight, back = gateway.get("queue_depth"), gateway.get("inflight"), gateway.get("backend") or {}
    seconds = gateway.get("seconds") or 0
    lines.append(
        f"{gateway.get('images', 0):,.0f} images in {_num(gateway.get('predict_calls'), '{:,.0f}')} Predict calls "
        f"({_num(gateway['predict_calls'] / seconds if seconds else None)}/s), mean batch "
        f"{_num(gateway.get('mean_batch'), '{:,.2f}')}; queue depth "
        + (f"{q['mean']:,.1f} mean, {q['max']:,.0f} max" if q else "not sampled")
        + "; requests in flight "
        + (f"{inflight['mean']:,.1f} mean, {inflight['max']:,.0f} max" if inflight else "not sampled")
        + f"; Predict by code: {', '.join(f'{k} {v:,.0f}' for k, v in back.get('by_code', {}).items()) or 'none'}, "
        f"retries {back.get('retries', 0):,.0f}; gateway CPU {_num(gateway.get('cpu_seconds'), '{:,.2f}')} s "
        f"({_num(gateway.get('cpu_ms_per_request'), '{:,.2f}')} ms per request). "
        f"From {gateway.get('reads', 0)} reads of {gateway.get('url', '/metrics')} over {seconds:,.0f} s.")
    routes = gateway.get("routes") or {}
    if routes:
        lines += ["", "| route (gateway's label) | requests | mean ms inside the gateway |", "|---|---:|---:|",
                  *[f"| {k} | {v['count']:,.0f} | {v['mean_ms']:,.1f} |" for k, v in routes.items()]]
    return lines


def _row(requests: Sequence[Mapping], name: str) -> Mapping | None:
    return next((r for r in requests if r["name"] == name and r["requests"]), None)


def _ratio(a: str | float, b: str | float) -> str:
    try:
        return f"{float(a) / float(b):,.2f}×"
    except (ValueError, ZeroDivisionError):
        return "–"


def quiet_flood_lines(requests: Sequence[Mapping], seen: Mapping[str, Mapping]) -> list[str]:
    """The verdict of a quiet-flood run in words: refused or not, latency against the flood's."""
    quiet, flood = _row(requests, options.QUIET_CLASSIFY), _row(requests, options.FLOOD_CLASSIFY)
    if quiet is None or flood is None:
        return [f"No answers from {'the quiet caller' if quiet is None else 'the flood'} to compare."]
    gateway = seen.get(options.QUIET)
    refused = gateway["refused"] if gateway else 0
    if quiet["failures"] == 0 and not refused:
        said = (f"**The quiet caller was never refused**: all {quiet['requests']:,} of its Classify calls were "
                "answered" + ("; the gateway refused none of its images." if gateway else "."))
    else:
        said = (f"**The quiet caller was refused or failed**: {quiet['failures']:,} of its {quiet['requests']:,} "
                "Classify calls failed (their errors are under Failures)"
                + (f"; the gateway refused {refused:,.0f} of its images as overload." if refused else "."))
    lines = [said, "",
             f"Quiet caller p50 {_ms(quiet['p50_ms'])} ms, p95 {_ms(quiet['p95_ms'])} ms; flood p50 "
             f"{_ms(flood['p50_ms'])} ms, p95 {_ms(flood['p95_ms'])} ms: the quiet caller's p50 is "
             f"{_ratio(quiet['p50_ms'], flood['p50_ms'])} the flood's, its p95 {_ratio(quiet['p95_ms'], flood['p95_ms'])}."]
    flooded = seen.get(options.FLOOD)
    if gateway and flooded and gateway["queue_wait_ms"] is not None and flooded["queue_wait_ms"] is not None:
        lines[-1] += (f" Inside the gateway its images waited {gateway['queue_wait_ms']:,.1f} ms for a batch on average, "
                      f"the flood's {flooded['queue_wait_ms']:,.1f} ms.")
    if seen and gateway is None:
        lines += ["", f"The gateway reported no caller `{options.QUIET}`: with API keys it names callers by "
                  "key, and beyond its first 20 callers it labels the rest `other`."]
    return lines


def callers_lines(gateway: Mapping | None, requests: Sequence[Mapping], mix: str) -> list[str]:
    """Per caller, from the gateway's metrics; for a quiet-flood run, the client's view beside it."""
    seen = (gateway or {}).get("callers") or {}
    lines: list[str] = []
    if seen:
        lines += ["| caller (gateway's label) | images queued | mean queue wait ms | queue depth mean / max | "
                  "images refused |", "|---|---:|---:|---:|---:|"]
        for name, c in seen.items():
            depth = c.get("queue_depth")
            lines.append(f"| {name} | {c['images']:,.0f} | {_num(c['queue_wait_ms'], '{:,.2f}')} | "
                         + (f"{depth['mean']:,.1f} / {depth['max']:,.0f}" if depth else "–")
                         + f" | {c['refused']:,.0f} |")
        if any(c.get("queue_depth") is None for c in seen.values()):
            lines += ["", "Queue depth –: the gateway kept no queue of that caller's own (fair queueing off: one "
                      "first-come queue per model), or was not read during the run."]
    elif mix == options.QUIET_FLOOD:
        lines.append("The gateway's callers were not read (see Inside the gateway); the client's view:")
    if mix == options.QUIET_FLOOD:
        lines += [""] * bool(lines) + quiet_flood_lines(requests, seen)
    return lines


def plot_lines(name: str, alt: str, plots: Mapping[str, str | None]) -> list[str]:
    if name not in plots:
        return []
    if plots[name] is not None:
        return [f"(plot unavailable: {plots[name]})", ""]
    return [f"![{alt}]({name})", ""]


def render(*, title: str, verdict: Mapping | None, exit_code: int | None, target: str, batch_images: int,
           settings: Mapping[str, object], machine: Machine, csv_prefix: Path, files: Sequence[str],
           plots: Mapping[str, str | None] | None = None, baseline: Sequence[str] = (),
           gateway: Mapping | None = None, callers: str = "mix",
           stage_windows: Sequence[Mapping[str, float]] = ()) -> str:
    """The page. `plots`: file name -> None (drawn) or why not (loadtest/plots.py `render`);
    `baseline`: the comparison's Markdown lines (loadtest/baseline.py), empty without one;
    `callers`: the run's --callers."""
    plots = plots or {}
    requests = (verdict or {}).get("requests") or requests_from_csv(
        read_csv(csv_prefix.with_name(csv_prefix.name + "_stats.csv")))
    shown = [r for r in requests if r["name"] != AGGREGATED] + list((verdict or {}).get("transports") or []) \
        + [r for r in requests if r["name"] == AGGREGATED]
    history = read_csv(csv_prefix.with_name(csv_prefix.name + "_stats_history.csv"))
    failures = read_csv(csv_prefix.with_name(csv_prefix.name + "_failures.csv"))
    parts = [
        f"# {title}", "",
        f"Target: {target}", "",
        "## Verdict", "", *verdict_lines(verdict, exit_code), "",
    ]
    if baseline:
        parts += ["## Against the baseline", "", *baseline, ""]
    parts += [
        "## Over time", "", *(plot_lines("timeline.png", "throughput, latency, failures and gateway stages "
                                         "over the run", plots) or ["(no plot)", ""]),
        "## Requests", "", *requests_table(shown), "",
        f"Images classified: ≈ {images_per_second(requests, batch_images):,.1f} per second "
        f"({' and '.join(MULTI_IMAGE_RPCS)} carry {batch_images} images per request).", "",
    ]
    who = callers_lines(gateway, requests, callers)
    if who:
        parts += ["## Callers", "", *who, ""]
    parts += [
        "## Inside the gateway", "", *gateway_lines(gateway), "",
        "## By stage", "", *stages_table(stages(history), stage_windows), "",
        *plot_lines("stages.png", "throughput and gateway stage times per load stage, knee marked", plots),
        "## Failures", "", *failures_table(failures), "",
        "## Settings", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in settings.items()], "",
        "## Machine", "", machine.markdown(), "",
        "## Files", "", *[f"- `{name}`" for name in files], "",
    ]
    return "\n".join(parts)
