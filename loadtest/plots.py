"""The load-test report's pictures, embedded in summary.md (Locust's report.html keeps its own).

* `timeline.png`: over the run, throughput with the user count; p50/p95/p99 latency; with
  request names to compare (a quiet-flood run: `Classify (quiet)` and `Classify (flood)`), their
  p50 and p95 side by side; failures per second; and, when the gateway's metrics were read during
  the run, its mean time per image in each stage with the mean batch size.
* `stages.png` (runs with at least two load stages, i.e. the step shape): throughput per stage
  with the knee marked and p95 beside it; and the gateway's stage times per load stage.

matplotlib is imported when a plot is drawn, with the Agg backend (no display needed), so the
load test does not pay for it otherwise. `render` never raises: a plot that cannot be drawn
(matplotlib missing, odd data) is logged as a warning and reported as unavailable, and the run
goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from loadtest import scrape
from loadtest.summary import AGGREGATED, Stage

log = logging.getLogger(__name__)

TIMELINE = "timeline.png"
STAGES = "stages.png"
PERCENTILES = (("50%", "p50"), ("95%", "p95"), ("99%", "p99"))
STAGE_COLOURS = {"decode": "C0", "queue_wait": "C3", "predict": "C2", "decide": "C4"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _float(value: str | None) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _interval_stages(snapshots: Sequence[scrape.Snapshot], t0: float) -> tuple[list[float], dict[str, list[float]],
                                                                              list[float | None]]:
    """Per scrape interval: its midpoint (seconds since t0), stage means and mean batch size."""
    times: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in scrape.STAGES}
    batches: list[float | None] = []
    for a, b in zip(snapshots, snapshots[1:]):
        means = scrape.stage_means(a, b)
        if not means:
            continue
        times.append((a.at + b.at) / 2 - t0)
        for s in scrape.STAGES:
            stages[s].append(means.get(s, 0.0))
        n = b.get("batch:count") - a.get("batch:count")
        batches.append((b.get("batch:sum") - a.get("batch:sum")) / n if n > 0 else None)
    return times, stages, batches


def _compared(history: Sequence[Mapping[str, str]], names: Sequence[str], t0: float) -> dict[str, list[tuple]]:
    """Per request name: (seconds since t0, p50, p95) of each history row with answers in its window."""
    out: dict[str, list[tuple]] = {}
    for name in names:
        rows = [r for r in history if r.get("Name") == name and (_float(r.get("50%")) or 0) > 0]
        if rows:
            out[name] = [(float(r["Timestamp"]) - t0, _float(r["50%"]), _float(r["95%"])) for r in rows]
    return out


def timeline(history: Sequence[Mapping[str, str]], snapshots: Sequence[scrape.Snapshot], path: Path,
             compare: Sequence[str] = ()) -> None:
    """Draw timeline.png; `compare`: request names whose latency gets a panel side by side. Raises
    ValueError when the history has no data, and whatever matplotlib raises."""
    rows = [r for r in history if r.get("Name") == AGGREGATED and r.get("User Count") not in (None, "0")
            and (_float(r.get("Total Request Count")) or 0) > 0]
    if len(rows) < 2:
        raise ValueError("fewer than two seconds of Locust history")
    t0 = float(rows[0]["Timestamp"])
    t = [float(r["Timestamp"]) - t0 for r in rows]
    plt = _pyplot()
    intervals = _interval_stages(snapshots, t0)
    compared = _compared(history, compare, t0)
    panels = 3 + bool(compared) + bool(intervals[0])
    fig, axes = plt.subplots(panels, 1, figsize=(10, 2.4 * panels), sharex=True)
    ax = axes[0]
    ax.plot(t, [_float(r["Requests/s"]) or 0.0 for r in rows], color="C0", label="requests/s")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    users = ax.twinx()
    users.step(t, [int(r["User Count"]) for r in rows], where="post", color="grey", linestyle=":", label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    ax.set_title("throughput (solid) and users (dotted)")
    ax = axes[1]
    for column, name in PERCENTILES:  # 0: no answer in the window yet (Locust writes 0, not N/A)
        ax.plot(t, [_float(r.get(column)) or None for r in rows], label=name)
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("latency over the last 10 s (Locust's window)")
    ax.legend(loc="upper left", fontsize=8)
    if compared:
        ax = axes[2]
        for i, (name, points) in enumerate(compared.items()):
            times = [p[0] for p in points]
            ax.plot(times, [p[1] for p in points], color=f"C{i}", label=f"{name} p50")
            ax.plot(times, [p[2] for p in points], color=f"C{i}", linestyle="--", label=f"{name} p95")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_title("side by side: p50 (solid) and p95 (dashed) over the last 10 s")
        ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax = axes[2 + bool(compared)]
    failures = [_float(r["Failures/s"]) or 0.0 for r in rows]
    ax.fill_between(t, failures, step="post", color="C3", alpha=0.6)
    ax.set_ylabel("failures / s")
    ax.set_ylim(bottom=0, top=max(1.0, max(failures) * 1.2))
    ax.set_title(f"failed requests: {int(float(rows[-1].get('Total Failure Count') or 0)):,} in all")
    if intervals[0]:
        ax = axes[-1]
        times, stages, batches = intervals
        ax.stackplot(times, *[stages[s] for s in scrape.STAGES], labels=scrape.STAGES,
                     colors=[STAGE_COLOURS[s] for s in scrape.STAGES], alpha=0.8)
        ax.set_ylabel("ms per image")
        ax.set_title("inside the gateway: mean time per image by stage (stacked), mean batch size (line)")
        ax.legend(loc="upper left", fontsize=8, ncol=4)
        batch = ax.twinx()
        batch.plot(times, batches, color="black", marker=".", linewidth=1)
        batch.set_ylabel("images per Predict")
        batch.set_ylim(bottom=0)
    axes[-1].set_xlabel("seconds since the first answer")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stages_chart(found: Sequence[Stage], knee: Stage | None, snapshots: Sequence[scrape.Snapshot],
                 path: Path) -> None:
    """Draw stages.png. Raises ValueError with fewer than two stages, and whatever matplotlib raises."""
    if len(found) < 2:
        raise ValueError("fewer than two load stages")
    plt = _pyplot()
    windows = [scrape.window(snapshots, s.start, s.end) for s in found]
    with_gateway = any(windows)
    fig, axes = plt.subplots(1, 2 if with_gateway else 1, figsize=(12 if with_gateway else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    x = list(range(len(found)))
    labels = [f"{s.users}" for s in found]
    colours = ["C1" if s is knee else "C0" for s in found]
    ax.bar(x, [s.rps for s in found], color=colours)
    if knee is not None:
        k = found.index(knee)
        ax.annotate("knee", (k, knee.rps), xytext=(0, 6), textcoords="offset points", ha="center",
                    fontweight="bold", color="C1")
    for i, s in enumerate(found):  # at the foot of each bar, clear of the p95 line
        ax.text(i, 0, f" {s.rps:,.0f}/s", rotation=90, ha="center", va="bottom", color="white", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_xlabel("users (load stage)")
    ax.set_ylabel("requests / s")
    ax.set_title("throughput per stage" + (" (knee in orange)" if knee else ""))
    p95 = ax.twinx()
    p95.plot(x, [_float(s.p95_ms) for s in found], color="black", marker="o", label="p95")
    p95.set_ylabel("p95 ms (line)")
    p95.set_ylim(bottom=0)
    if with_gateway:
        ax = axes[0][1]
        bottom = [0.0] * len(found)
        for stage in scrape.STAGES:
            values = [w.get(stage, 0.0) for w in windows]
            ax.bar(x, values, bottom=bottom, label=stage, color=STAGE_COLOURS[stage])
            bottom = [b + v for b, v in zip(bottom, values)]
        if knee is not None:
            ax.axvline(found.index(knee) + 0.5, color="C1", linestyle="--", label="knee")
        ax.set_xticks(x, labels)
        ax.set_xlabel("users (load stage)")
        ax.set_ylabel("ms per image")
        ax.set_title("inside the gateway: mean time per image by stage")
        ax.legend(fontsize=8)
    for row in axes:
        for a in row:
            a.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(folder: Path, history: Sequence[Mapping[str, str]], snapshots: Sequence[scrape.Snapshot],
           found: Sequence[Stage], knee: Stage | None, compare: Sequence[str] = ()) -> dict[str, str | None]:
    """Draw every plot that applies into `folder`: file name -> None when drawn, else why not.
    `compare`: request names drawn side by side in the timeline."""
    jobs = {TIMELINE: lambda path: timeline(history, snapshots, path, compare)}
    if len(found) >= 2:
        jobs[STAGES] = lambda path: stages_chart(found, knee, snapshots, path)
    done: dict[str, str | None] = {}
    for name, draw in jobs.items():
        try:
            draw(folder / name)
            done[name] = None
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the run; the reason is reported
            log.warning("plot %s unavailable: %s", name, exc)
            done[name] = f"{type(exc).__name__}: {exc}"
    return done
