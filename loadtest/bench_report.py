"""The benchmark's report: goals met or missed, the sweep, and how it was measured.

`write(result, folder)` produces report.md, samples.csv (one row per measured point, with the CPU
milliseconds per image of each process measured and the gateway's mean batch and stage times,
blank where not measured), goals.csv and
bench.png (throughput, p50 and p99 latency against concurrency). The goals are the stack's speed
and cost targets (loadtest/README.md lists them); a goal that could not be measured says why
instead of passing. The real-photo and two-replica series (loadtest/bench_photos.py,
loadtest/bench_fleet.py) and the profile (loadtest/profile.py) add their goals and sections.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from loadtest.loadgen import LOADGEN_CPU, Sample
from loadtest.machine import Machine

if TYPE_CHECKING:
    from loadtest.bench_fairness import FairnessResult
    from loadtest.bench_fleet import FleetResult
    from loadtest.bench_photos import PhotoResult
    from loadtest.profile import Profile

HEADLINE_CONCURRENCY = 32
IDLE_RSS_LIMIT_MIB = 150.0  # the gateway's idle resident memory
GATEWAY_CPU_MS_GOAL = 1.0  # gateway CPU per image, batching on, at the headline concurrency
GATEWAY_CPU_VS_TRIVIAL_GOAL = 1.8  # ... as a multiple of its CPU per trivial health Check in the same run
BATCH = 32  # images per Predict when comparing the model server with the in-process call

# The measured series, by name (loadtest/bench.py measures them under these names).
SERIES_DIRECT_BYTES = "direct Predict, encoded image"
SERIES_DIRECT_PIXELS = "direct Predict, uint8 pixels"
SERIES_GATEWAY_ON = "gateway, batching on"
SERIES_GATEWAY_OFF = "gateway, batching off"
SERIES_GATEWAY_OFF_WIDE = "gateway, batching off, 64 Predicts in flight"
SERIES_TRIVIAL = "gateway health Check (trivial)"
SERIES_TRIVIAL_PACED = "gateway health Check (trivial), paced to the batching gateway's calls/s"
SERIES_BATCH = f"direct Predict, batch {BATCH}"
CPU_GATEWAY = "gateway"
CPU_MODEL_SERVER = "model server"
# samples.csv's CPU columns: milliseconds of CPU per image answered, by process (blank: not measured).
CPU_COLUMNS = {"loadgen_cpu_ms_per_image": LOADGEN_CPU, "gateway_cpu_ms_per_image": CPU_GATEWAY,
               "server_cpu_ms_per_image": CPU_MODEL_SERVER}
# ... and the gateway's own figures (Sample.gateway_metrics: "mean batch", "<stage> ms").
MEAN_BATCH, MEAN_BATCH_COLUMN, STAGE_PREFIX = "mean batch", "mean_batch", "stage_"


@dataclass(frozen=True)
class DecodeRate:
    images: int
    wall_s: float
    cpu_s: float
    source: str

    @property
    def per_core(self) -> float:
        """Images per CPU-second: what one core does, whatever else shares the machine."""
        return self.images / self.cpu_s if self.cpu_s else float("nan")

    @property
    def per_wall_second(self) -> float:
        return self.images / self.wall_s


@dataclass
class BenchResult:
    """Everything `loadtest.bench` measured, filled in as it goes."""

    started: str
    machine: Machine
    settings: dict[str, object]
    finished: str = ""
    load_after: tuple[float, float, float] | None = None
    model: str = ""
    images: str = ""
    samples: list[Sample] = field(default_factory=list)
    trivial: Sample | None = None  # the trivial endpoint at the highest concurrency (load-generator headroom)
    trivial_headline: Sample | None = None  # ... at the headline concurrency, when that is another one
    trivial_paced: Sample | None = None  # ... at the headline concurrency, paced to the batching gateway's calls/s
    batch_server: Sample | None = None
    inprocess: dict = field(default_factory=dict)
    decode: DecodeRate | None = None
    request_bytes: dict[int, dict[str, int]] = field(default_factory=dict)
    rss_before: dict[str, float] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    photos: "PhotoResult | None" = None
    fleet: "FleetResult | None" = None
    fairness: "FairnessResult | None" = None
    profile: "Profile | None" = None


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: could not be measured

    @property
    def mark(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]

    def counting_errors(self, *samples: Sample | None) -> "Goal":
        """This goal, missed and saying so when a sample it used had failed calls: its figures
        come from the successful calls only."""
        errors = sum(s.error_count for s in samples if s is not None)
        if not errors or self.met is None:
            return self
        return Goal(self.name, f"{self.measured} ({errors:,} errors)", self.goal, False)


def headline(found: Sequence[Goal]) -> str:
    """`9 met, 2 missed: name; name` (and how many could not be measured)."""
    missed = [g.name for g in found if g.met is False]
    unmeasured = sum(1 for g in found if g.met is None)
    line = f"{sum(1 for g in found if g.met)} met, {len(missed)} missed"
    line += f": {'; '.join(missed)}" if missed else ""
    return line + (f"; {unmeasured} not measured." if unmeasured else ".")


def _series(samples: Sequence[Sample], name: str) -> list[Sample]:
    return sorted((s for s in samples if s.series == name), key=lambda s: s.concurrency)


def _at(samples: Sequence[Sample], name: str, level: int) -> Sample | None:
    return next((s for s in _series(samples, name) if s.concurrency == level), None)


def headline_level(samples: Sequence[Sample]) -> int:
    levels = sorted({s.concurrency for s in samples})
    if not levels:
        return HEADLINE_CONCURRENCY
    below = [c for c in levels if c <= HEADLINE_CONCURRENCY]
    return below[-1] if below else levels[0]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or NaN, or b is zero."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def cpu_ms_per_image(s: Sample) -> float:
    """CPU time per image over every process measured (load generator, gateway, model server)."""
    return sum(c for c in (s.cpu_ms_per_image(p) for p in (LOADGEN_CPU, CPU_GATEWAY, CPU_MODEL_SERVER))
               if not math.isnan(c))


def _by_cpu(baseline: Sample, candidate: Sample) -> str:
    """The same ratio as CPU cost predicts it: what it would be with the cores to themselves.

    CPU time per image hardly depends on what else runs on the machine; throughput does.
    """
    by_cpu = ratio(cpu_ms_per_image(baseline), cpu_ms_per_image(candidate))
    return "" if by_cpu is None else f"; {by_cpu:.2f}× by CPU per image"


def _rate(s: Sample | None) -> float | None:
    return s.images_per_s if s is not None and s.calls else None


def goals(r: BenchResult) -> list[Goal]:
    level = headline_level(r.samples)
    out: list[Goal] = []
    on = _at(r.samples, SERIES_GATEWAY_ON, level)
    offs = [s for s in (_at(r.samples, SERIES_GATEWAY_OFF, level), _at(r.samples, SERIES_GATEWAY_OFF_WIDE, level))
            if s is not None and s.calls]
    off = max(offs, key=lambda s: s.images_per_s, default=None)  # batching must beat the better one
    direct_name = (SERIES_DIRECT_BYTES if _at(r.samples, SERIES_DIRECT_BYTES, level)
                   else SERIES_DIRECT_PIXELS)
    direct = _at(r.samples, direct_name, level)
    x = ratio(_rate(on), _rate(direct))
    out.append(Goal(f"through the gateway vs {direct_name}, images/s at {level} in flight",
                    "n/a" if x is None else
                    f"{x:.2f}× ({on.images_per_s:,.0f} vs {direct.images_per_s:,.0f}){_by_cpu(direct, on)}",
                    "≥ 0.9×", None if x is None else x >= 0.9).counting_errors(on, direct))
    out += cpu_goals(r, on, level)
    x = ratio(_rate(on), _rate(off))
    p99_ok = on is not None and off is not None and on.percentile_ms(0.99) <= off.percentile_ms(0.99)
    out.append(Goal(f"gateway micro-batching on vs off (the better of the two off variants: "
                    f"{off.series if off else 'n/a'}), images/s at {level} in flight",
                    "n/a" if x is None else
                    f"{x:.2f}× ({on.images_per_s:,.0f} vs {off.images_per_s:,.0f}){_by_cpu(off, on)}; "
                    f"p99 {on.percentile_ms(0.99):,.1f} vs {off.percentile_ms(0.99):,.1f} ms",
                    "≥ 1.5×, p99 not worse", None if x is None else (x >= 1.5 and p99_ok)).counting_errors(on, off))
    server, local = _rate(r.batch_server), r.inprocess.get("images_per_s")
    x = ratio(server, local)
    out.append(Goal(f"model server Predict vs in-process signature call, batch {BATCH}",
                    f"n/a ({r.inprocess.get('error', 'no result')})" if x is None else
                    f"{x:.2f}× ({server:,.0f} vs {local:,.0f} images/s)",
                    "≥ 0.8×", None if x is None else x >= 0.8).counting_errors(r.batch_server))
    out.append(request_bytes_goal(r.request_bytes))
    d = r.decode
    out.append(Goal("decode+resize of a 640×480 JPEG, one core",
                    "n/a" if d is None else f"{d.per_core:,.0f} images per CPU-second "
                                            f"({d.per_wall_second:,.0f}/s wall clock)",
                    "≥ 1,000 images/s", None if d is None else d.per_core >= 1000))
    idle = r.rss_before.get(SERIES_GATEWAY_ON)
    out.append(Goal("gateway resident memory, idle → after the sweep (the batching gateway)",
                    "n/a" if idle is None else
                    f"{idle:,.0f} → {r.rss_after.get(SERIES_GATEWAY_ON, float('nan')):,.0f} MiB",
                    f"idle ≤ {IDLE_RSS_LIMIT_MIB:.0f} MiB", None if idle is None else idle <= IDLE_RSS_LIMIT_MIB))
    best = max((s for s in r.samples if s.calls), key=lambda s: s.calls_per_s, default=None)
    trivial = r.trivial if r.trivial and r.trivial.calls else None
    out.append(Goal("load generator headroom: trivial endpoint vs best system figure, calls/s",
                    "n/a" if trivial is None or best is None else
                    f"{trivial.calls_per_s:,.0f} vs {best.calls_per_s:,.0f}",
                    "trivial > system", None if trivial is None or best is None else
                    trivial.calls_per_s > best.calls_per_s).counting_errors(trivial))
    from loadtest import bench_fairness, bench_fleet, bench_photos

    return out + bench_photos.goals(r.photos) + bench_fleet.goals(r.fleet) + bench_fairness.goals(r.fairness)


def request_bytes_goal(sizes: dict[int, dict[str, int]]) -> Goal:
    """Judged at BATCH images, where the request's names and shape (a fixed ~65 B) no longer count."""
    many, one = sizes.get(BATCH), sizes.get(1)
    x = ratio(many and many["uint8"], many and many["float32"])
    single = "" if not one else (f"; {one['uint8'] / one['float32']:.3f}× for 1 image, of which "
                                 f"{one['uint8'] - one['pixels']} B names and shape")
    return Goal(f"request bytes, uint8 tensor_content vs float32 values ({BATCH} images)",
                "n/a" if x is None else f"{x:.3f}× ({many['uint8']:,} vs {many['float32']:,} B){single}",
                "≤ 0.26×", None if x is None else x <= 0.26)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def cpu_goals(r: BenchResult, on: Sample | None, level: int) -> list[Goal]:
    """The gateway's CPU per image, absolute and against its CPU per trivial call in the same run."""
    mine = _finite(on.cpu_ms_per_image(CPU_GATEWAY)) if on else None
    same = next((t for t in (r.trivial_headline, r.trivial) if t is not None and t.concurrency == level), None)
    trivial = _finite(same.cpu_ms_per_image(CPU_GATEWAY)) if same and same.calls else None
    x = ratio(mine, trivial)
    return [
        Goal(f"gateway CPU per image, batching on, {level} in flight",
             "n/a" if mine is None else f"{mine:.2f} ms", f"≤ {GATEWAY_CPU_MS_GOAL:.1f} ms",
             None if mine is None else mine <= GATEWAY_CPU_MS_GOAL).counting_errors(on),
        Goal(f"gateway CPU per image vs per trivial health Check call (same run), {level} in flight",
             "n/a" if x is None else f"{x:.2f}× ({mine:.2f} vs {trivial:.2f} ms){_paced(r.trivial_paced, mine, trivial)}",
             f"≤ {GATEWAY_CPU_VS_TRIVIAL_GOAL}×", None if x is None else x <= GATEWAY_CPU_VS_TRIVIAL_GOAL
             ).counting_errors(on, same),
    ]


def _paced(paced: Sample | None, mine: float | None, trivial: float | None) -> str:
    """The same comparison with the Check paced to the gateway's own calls/s: a gRPC call costs a
    server less CPU the more calls share each wake-up, so unpaced the Check is cheaper than it would
    be at the gateway's load (context for the figure; the goal is judged as stated). The paced
    Check against the unpaced one is what the call alone takes of the ratio at the gateway's rate."""
    per_call = _finite(paced.cpu_ms_per_image(CPU_GATEWAY)) if paced and paced.calls else None
    x = ratio(mine, per_call)
    if x is None:
        return ""
    floor = ratio(per_call, trivial)
    alone = "" if floor is None else f"; the paced Check alone is {floor:.2f}× the Check"
    return (f"; {x:.2f}× against the Check paced to the same calls/s "
            f"({paced.calls_per_s:,.0f}/s: {per_call:.2f} ms a call{alone})")


def write_samples_csv(samples: Sequence[Sample], path: Path) -> None:
    """One row per sample. Beside the client's figures: CPU_COLUMNS, and the gateway's own account
    from its /metrics where it was read: `mean_batch` and one `stage_<stage>_ms` column per stage
    (mean ms per image), blank where not measured."""
    stages = list(dict.fromkeys(k for s in samples for k in s.gateway_metrics if k != MEAN_BATCH))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["series", "concurrency", "processes", "seconds", "images_per_call", "calls", "calls_per_s",
                    "images_per_s", "p50_ms", "p90_ms", "p99_ms", "errors", *CPU_COLUMNS, MEAN_BATCH_COLUMN,
                    *(stage_column(k) for k in stages)])
        for s in samples:
            cpu = [s.cpu_ms_per_image(process) for process in CPU_COLUMNS.values()]
            gateway = [s.gateway_metrics.get(k) for k in (MEAN_BATCH, *stages)]
            w.writerow([s.series, s.concurrency, s.processes, s.seconds, s.images_per_call, s.calls,
                        f"{s.calls_per_s:.1f}", f"{s.images_per_s:.1f}",
                        *(_cell(s.percentile_ms(q), "{:.2f}") for q in (0.5, 0.9, 0.99)),
                        ";".join(f"{k}={v}" for k, v in sorted(s.errors.items())),
                        *(_cell(c, "{:.3f}") for c in cpu), *(_cell(v, "{:.3f}") for v in gateway)])


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None or math.isnan(value) else fmt.format(value)


def stage_column(metric: str) -> str:
    """'queue_wait ms' -> 'stage_queue_wait_ms'."""
    return STAGE_PREFIX + metric.replace(" ", "_")


def write_goals_csv(found: Sequence[Goal], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["goal", "measured", "target", "met"])
        for g in found:
            w.writerow([g.name, g.measured, g.goal, "" if g.met is None else g.met])


def plot(samples: Sequence[Sample], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, name in enumerate(dict.fromkeys(s.series for s in samples)):
        points = _series(samples, name)
        x = [p.concurrency for p in points]
        colour = f"C{i}"
        left.plot(x, [p.images_per_s for p in points], marker="o", color=colour, label=name)
        right.plot(x, [p.percentile_ms(0.99) for p in points], marker="o", color=colour, label=f"{name} p99")
        right.plot(x, [p.percentile_ms(0.5) for p in points], marker=".", linestyle="--", color=colour,
                   label=f"{name} p50")
    levels = sorted({s.concurrency for s in samples})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("calls in flight (concurrency)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("images / s")
    left.set_title("throughput")
    left.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("latency, ms")
    right.set_title("latency: p99 (solid), p50 (dashed)")
    right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_series(samples: Sequence[Sample]) -> list[Sample]:
    order = list(dict.fromkeys(s.series for s in samples))
    return sorted(samples, key=lambda s: (order.index(s.series), s.concurrency))


def _sweep_table(samples: Sequence[Sample]) -> list[str]:
    lines = ["| series | in flight | images/s | calls/s | p50 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for s in _by_series(samples):
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        lines.append(f"| {s.series} | {s.concurrency} | {_images_per_s(s)} | {s.calls_per_s:,.0f} | "
                     f"{s.percentile_ms(0.5):,.1f} | {s.percentile_ms(0.99):,.1f} | {errors} |")
    return lines


def _images_per_s(s: Sample) -> str:
    """A health Check carries no image: its row says so instead of counting calls as images."""
    return f"– ({s.calls_per_s:,.0f} calls/s)" if _trivial(s) else f"{s.images_per_s:,.0f}"


def _per_call_label(s: Sample) -> str:
    return f"{s.series}, per call" if _trivial(s) else s.series


def _trivial(s: Sample) -> bool:
    return s.series in (SERIES_TRIVIAL, SERIES_TRIVIAL_PACED)


def _num(value: float, fmt: str = "{:,.2f}") -> str:
    return "–" if value is None or math.isnan(value) else fmt.format(value)


def _cpu_table(samples: Sequence[Sample]) -> list[str]:
    stages = list(dict.fromkeys(k for s in samples for k in s.gateway_metrics if k != MEAN_BATCH))
    processes = (LOADGEN_CPU, CPU_GATEWAY, CPU_MODEL_SERVER)
    lines = ["| series | in flight | images/s | " + " | ".join(f"{p} CPU ms/img" for p in processes)
             + " | sum | mean batch | " + " | ".join(f"{k}/img" for k in stages) + " |",
             "|---|---:|---:|" + "---:|" * (len(processes) + 2 + len(stages))]
    for s in _by_series(samples):
        cpu = [s.cpu_ms_per_image(p) for p in processes]
        total = cpu_ms_per_image(s)
        lines.append(f"| {_per_call_label(s)} | {s.concurrency} | {_images_per_s(s)} | "
                     + " | ".join(_num(c) for c in cpu) + f" | {total:.2f} | "
                     + _num(s.gateway_metrics.get(MEAN_BATCH, float("nan")), "{:.1f}") + " | "
                     + " | ".join(_num(s.gateway_metrics.get(k, float("nan"))) for k in stages) + " |")
    return lines


def series_table(samples: Sequence[Sample]) -> list[str]:
    """A series' points with their latency and the servers' CPU per image."""
    lines = ["| series | in flight | images/s | p50 ms | p99 ms | errors | gateway CPU ms/img | "
             "model server CPU ms/img |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for s in samples:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        lines.append(f"| {s.series} | {s.concurrency} | {s.images_per_s:,.1f} | {s.percentile_ms(0.5):,.1f} | "
                     f"{s.percentile_ms(0.99):,.1f} | {errors} | {_num(s.cpu_ms_per_image(CPU_GATEWAY))} | "
                     f"{_num(s.cpu_ms_per_image(CPU_MODEL_SERVER))} |")
    return lines


def cost_note(r: BenchResult) -> str | None:
    """What the CPU accounting says about the gateway-vs-direct ratio at the headline concurrency."""
    level = headline_level(r.samples)
    on = _at(r.samples, SERIES_GATEWAY_ON, level)
    direct = _at(r.samples, SERIES_DIRECT_BYTES, level) or _at(r.samples, SERIES_DIRECT_PIXELS, level)
    total = cpu_ms_per_image
    if on is None or direct is None or total(on) <= 0 or total(direct) <= 0:
        return None  # not measured, or no call succeeded (no CPU per image)
    cores = r.machine.usable_cores
    return (f"At {level} in flight, one image through the gateway costs {total(on):.2f} ms of CPU in these "
            f"processes (gateway {_num(on.cpu_ms_per_image(CPU_GATEWAY))}, model server "
            f"{_num(on.cpu_ms_per_image(CPU_MODEL_SERVER))}, load generator "
            f"{_num(on.cpu_ms_per_image(LOADGEN_CPU))}) "
            f"against {total(direct):.2f} ms for {direct.series}. With everything on {cores} cores, those costs "
            f"cap throughput near {cores * 1000 / total(on):,.0f} and {cores * 1000 / total(direct):,.0f} images/s; "
            f"on separate nodes the gateway's share runs on its own cores.")


def _load(values: tuple[float, float, float] | None) -> str:
    return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)


def render(r: BenchResult, found: Sequence[Goal], chart: bool = True) -> str:
    """report.md's text; `chart`: bench.png was drawn."""
    m = r.machine
    extra = [s for s in (r.trivial, r.trivial_headline, r.trivial_paced, r.batch_server) if s is not None]
    lines = [
        f"# Benchmark {r.started}", "",
        f"Ran on {m.cpu_model}, {m.usable_cores} usable cores, {m.ram_gib:.0f} GiB RAM; load average "
        f"{_load(m.load_average)} before, {_load(r.load_after)} after (1 / 5 / 15 min). Load generator, "
        f"model server and gateways share these cores, as they would on one node.", "",
        f"Model: {r.model}. Images: {r.images}.", "",
        "## Goals", "", f"**{headline(found)}**", "",
        "| comparison | measured | goal | |", "|---|---|---|---|",
        *[f"| {g.name} | {g.measured} | {g.goal} | {g.mark} |" for g in found], "",
    ]
    if r.notes:
        lines += ["Notes:", "", *[f"- {n}" for n in r.notes], ""]
    lines += [
        "## Sweep", "",
        "Closed loop: each caller sends its next request when the last one is answered. "
        "Throughput counts calls completed in the measured window; latencies are client-side. "
        "All series were measured at one concurrency before moving to the next, so the figures "
        "compared at a level share the same background load.", "",
        *_sweep_table(r.samples), "",
        *(["![throughput and latency against concurrency](bench.png)", ""] if chart else []),
        "## Where the CPU goes", "",
        "CPU time each process spent in the measured window, per image answered (psutil for the servers, "
        "the workers' own process time for the load generator), and the gateway's own stage timings "
        "from its /metrics (mean per image; queue_wait is time spent waiting for a batch to fill). "
        f"The {SERIES_TRIVIAL} rows count calls, not images: their CPU is per call.", "",
        *_cpu_table([*r.samples, *extra]), "",
    ]
    note = cost_note(r)
    if note:
        lines += [note, ""]
    if r.profile is not None:
        from loadtest import profile

        on = _at(r.samples, SERIES_GATEWAY_ON, headline_level(r.samples))
        cpu = on.cpu_ms_per_image(CPU_GATEWAY) if on else float("nan")
        lines += [f"## Where the gateway's CPU goes (profile, {SERIES_GATEWAY_ON}, "
                  f"{headline_level(r.samples)} in flight)", "", *profile.markdown(r.profile, cpu)]
    from loadtest import bench_fairness, bench_fleet, bench_photos

    lines += bench_photos.markdown(r.photos, series_table) + bench_fleet.markdown(r.fleet, series_table)
    lines += bench_fairness.markdown(r.fairness)
    lines += [
        "## Other measurements", "", *_sweep_table(extra), "",
    ]
    if r.inprocess and "error" not in r.inprocess:
        lines += [f"In-process signature call: {r.inprocess['images_per_s']:,.0f} images/s at batch "
                  f"{r.inprocess['batch']} ({r.inprocess['calls']} calls in {r.inprocess['seconds']:.1f} s, "
                  f"TensorFlow {r.inprocess['tensorflow']}).", ""]
    if r.decode is not None:
        d = r.decode
        lines += [f"Decode: {d.images:,} decodes of {d.source} in {d.wall_s:.2f} s wall clock, "
                  f"{d.cpu_s:.2f} s CPU on one thread (gateway/decode.py; the best of 3 rounds).", ""]
    if r.rss_before:
        lines += ["Gateway resident memory (MiB): " + "; ".join(
            f"{name}: {r.rss_before[name]:,.0f} idle → {r.rss_after.get(name, float('nan')):,.0f} after"
            for name in r.rss_before), ""]
    lines += [
        "## Settings", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r.settings.items()], "",
        "## Machine", "", m.markdown(), "",
        f"Finished {r.finished}.", "",
    ]
    return "\n".join(lines)


def write(r: BenchResult, folder: Path) -> list[Goal]:
    found = goals(r)
    extra = [s for s in (r.trivial, r.trivial_headline, r.trivial_paced, r.batch_server) if s is not None]
    series = [*(r.photos.samples if r.photos else ()), *(r.fleet.samples if r.fleet else ())]
    write_samples_csv([*r.samples, *extra, *series], folder / "samples.csv")
    write_goals_csv(found, folder / "goals.csv")
    answered = [s for s in r.samples if s.calls]  # a point without answers has no latency to draw
    chart = False
    if answered:
        try:
            plot(answered, folder / "bench.png")
            chart = True
        except Exception as exc:  # noqa: BLE001 - a chart that cannot be drawn must not cost the report
            r.notes.append(f"bench.png not drawn: {type(exc).__name__}: {exc}")
    (folder / "report.md").write_text(render(r, found, chart), encoding="utf-8")
    return found
