"""The gateway's own account of a load-test run, read from its Prometheus `GET /metrics`.

`Scraper` reads the gateway's metrics (gateway/metrics.py names them) before the run, every
`interval` seconds during it (the gauges, queue depth and requests in flight, only mean something
while the load is on) and after it, in a background thread of `loadtest.run`. Each read is a
`Snapshot`: flat keys such as `stage:queue_wait:sum`, summed over models. From the snapshots:

* `summarize`: what the run cost inside the gateway, from the counters' growth between the first
  and the last snapshot: mean time per image in each stage (decode, queue_wait, predict, decide),
  mean batch size, queue depth and requests in flight (mean and max over the scrapes), backend
  calls by code and retries, the gateway's CPU, its own time per transport and route, and per
  caller (the name fair queueing goes by: API key name, x-client-id or address) images queued,
  mean queue wait, queue depth and images refused. This is what `verdict.json` keeps under
  `gateway`, and what a baseline comparison attributes a change to (loadtest/baseline.py);
* `window`: the stage means between two moments (one load stage of the step shape);
* `write_history`: every snapshot as a row of `gateway_metrics.csv`.

Counters are the process's since it started, so other traffic to a shared gateway during the run
is counted too; a gateway that restarted during the run (a counter went down) gives no summary.
With several gateway replicas behind one URL, each scrape may reach a different one: point
`--metrics-url` at one replica. Nothing here raises on a failed scrape: the error is recorded and
the run goes on.
"""

from __future__ import annotations

import csv
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prometheus_client.parser import text_string_to_metric_families

STAGES = ("decode", "queue_wait", "predict", "decide")  # gateway/metrics.py STAGES, in request order
STAGE_SECONDS = "gateway_stage_duration_seconds"
REQUEST_SECONDS = "gateway_request_duration_seconds"
BATCH_SIZE = "gateway_batch_size"
QUEUE_DEPTH = "gateway_queue_depth"
INFLIGHT = "gateway_inflight_requests"
BACKEND_REQUESTS = "gateway_backend_requests_total"
BACKEND_RETRIES = "gateway_backend_retries_total"
PROCESS_CPU = "process_cpu_seconds_total"
CALLER_QUEUE_WAIT = "gateway_caller_queue_wait_seconds"
CALLER_QUEUE_DEPTH = "gateway_caller_queue_depth"
CALLER_REJECTIONS = "gateway_caller_rejections_total"
PREDICT = "Predict"
TIMEOUT_S = 5.0


class ScrapeError(RuntimeError):
    """GET /metrics failed or did not answer the Prometheus text format."""


@dataclass(frozen=True)
class Snapshot:
    at: float  # Unix time of the read
    values: dict[str, float]

    def get(self, key: str) -> float:
        return self.values.get(key, 0.0)


def parse(text: str, at: float) -> Snapshot:
    """The metrics a run summary reads, as flat keys summed over the labels they do not keep."""
    values: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        values[key] = values.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels = s.name, s.labels
            if name in (f"{STAGE_SECONDS}_sum", f"{STAGE_SECONDS}_count"):
                add(f"stage:{labels.get('stage', '?')}:{name.rsplit('_', 1)[1]}", s.value)
            elif name in (f"{REQUEST_SECONDS}_sum", f"{REQUEST_SECONDS}_count") and labels.get("model"):
                route = f"{labels.get('transport', '?')} {labels.get('route', '?')}"
                add(f"request:{route}:{name.rsplit('_', 1)[1]}", s.value)
            elif name in (f"{BATCH_SIZE}_sum", f"{BATCH_SIZE}_count"):
                add(f"batch:{name.rsplit('_', 1)[1]}", s.value)
            elif name == QUEUE_DEPTH:
                add("queue_depth", s.value)
            elif name == INFLIGHT:
                add("inflight", s.value)
            elif name == BACKEND_REQUESTS and labels.get("method") == PREDICT:
                add(f"backend:{labels.get('code', '?')}", s.value)
            elif name == BACKEND_RETRIES:
                add("backend_retries", s.value)
            elif name == PROCESS_CPU:
                add("cpu_seconds", s.value)
            elif name in (f"{CALLER_QUEUE_WAIT}_sum", f"{CALLER_QUEUE_WAIT}_count"):
                add(f"caller:{labels.get('caller', '?')}:queue_wait:{name.rsplit('_', 1)[1]}", s.value)
            elif name == CALLER_QUEUE_DEPTH:
                add(f"caller:{labels.get('caller', '?')}:queue_depth", s.value)
            elif name == CALLER_REJECTIONS:
                add(f"caller:{labels.get('caller', '?')}:rejections", s.value)
    if not any(key.startswith("stage:") or key.startswith("batch:") for key in values) and "inflight" not in values:
        raise ScrapeError("no gateway metrics in the answer (is this the gateway's /metrics?)")
    return Snapshot(at, values)


def scrape(url: str, timeout: float = TIMEOUT_S) -> Snapshot:
    """One read of `url`. Raises ScrapeError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"GET {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        raise ScrapeError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None
    try:
        return parse(text, time.time())
    except ValueError as exc:  # the Prometheus parser's
        raise ScrapeError(f"GET {url}: not the Prometheus text format ({exc})") from None


@dataclass
class Scraper:
    """Reads `url` now (`start`), every `interval` seconds in a thread, and once more at `stop`."""

    url: str
    interval: float = 1.0
    snapshots: list[Snapshot] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _read(self) -> bool:
        try:
            self.snapshots.append(scrape(self.url))
            return True
        except ScrapeError as exc:
            self.errors.append(str(exc))
            return False

    def start(self) -> "Scraper":
        """The first read; False-y `snapshots` afterwards means the metrics are not reachable."""
        if self._read() and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_S + 1)
        if self.snapshots:
            self._read()

    @property
    def error(self) -> str | None:
        """Why there is no summary, if there is none."""
        if len(self.snapshots) >= 2:
            return None
        return self.errors[0] if self.errors else "fewer than two reads of the gateway's metrics"


def _mean_ms(before: Snapshot, after: Snapshot, prefix: str) -> tuple[float | None, float]:
    count = after.get(f"{prefix}:count") - before.get(f"{prefix}:count")
    total = after.get(f"{prefix}:sum") - before.get(f"{prefix}:sum")
    return (1000.0 * total / count if count > 0 else None), count


def stage_means(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Mean milliseconds per image in each stage between two snapshots (stages with images only)."""
    out = {}
    for stage in STAGES:
        mean, _ = _mean_ms(before, after, f"stage:{stage}")
        if mean is not None:
            out[stage] = mean
    return out


def _counter_reset(before: Snapshot, after: Snapshot) -> str | None:
    for key, value in before.values.items():
        if key.endswith(":count") and after.get(key) < value:
            return (f"{key.rsplit(':', 1)[0]} count went from {value:g} to {after.get(key):g}: "
                    "the gateway restarted, or the reads reached different replicas")
    return None


def _gauge(during: Sequence[Snapshot], key: str) -> dict[str, float] | None:
    if not during:
        return None
    return {"mean": sum(s.get(key) for s in during) / len(during), "max": max(s.get(key) for s in during)}


CALLER_FIELDS = (":queue_wait:count", ":queue_wait:sum", ":queue_depth", ":rejections")


def callers(before: Snapshot, after: Snapshot, during: Sequence[Snapshot]) -> dict[str, dict]:
    """Per caller label (callers with images queued or refused between the snapshots): images that
    waited for a batch, their mean wait in ms, the queue depth while under load (None when the
    gateway kept no queue of the caller's own: fair queueing off), images refused."""
    names = {key[len("caller:"):-len(suffix)] for key in after.values if key.startswith("caller:")
             for suffix in CALLER_FIELDS if key.endswith(suffix)}
    out = {}
    for name in sorted(names):
        mean, images = _mean_ms(before, after, f"caller:{name}:queue_wait")
        refused = after.get(f"caller:{name}:rejections") - before.get(f"caller:{name}:rejections")
        depth = f"caller:{name}:queue_depth"
        if images > 0 or refused > 0:
            out[name] = {"images": images, "queue_wait_ms": mean, "refused": refused,
                         "queue_depth": _gauge(during, depth) if any(depth in s.values for s in during) else None}
    return out


def summarize(snapshots: Sequence[Snapshot], url: str = "", requests: int | None = None) -> dict:
    """What the run cost inside the gateway (see the module docstring); {"error": ...} when it
    cannot be told. `requests`: the client's count, for the gateway's CPU per request."""
    if len(snapshots) < 2:
        return {"url": url, "error": "fewer than two reads of the gateway's metrics"}
    before, after = snapshots[0], snapshots[-1]
    reset = _counter_reset(before, after)
    if reset:
        return {"url": url, "error": reset}
    during = snapshots[1:-1]  # the gauges under load; before and after the run they read idle
    batches = after.get("batch:count") - before.get("batch:count")
    images = after.get("stage:decode:count") - before.get("stage:decode:count")
    by_code = {key.split(":", 1)[1]: after.get(key) - before.get(key)
               for key in after.values if key.startswith("backend:")}
    routes = {}
    for key in after.values:
        if key.startswith("request:") and key.endswith(":count"):
            route = key[len("request:"):-len(":count")]
            mean, count = _mean_ms(before, after, f"request:{route}")
            if count > 0:
                routes[route] = {"count": count, "mean_ms": mean}
    cpu = after.get("cpu_seconds") - before.get("cpu_seconds")
    return {
        "url": url, "seconds": after.at - before.at, "reads": len(snapshots),
        "images": images, "stages_ms": stage_means(before, after),
        "predict_calls": batches,
        "mean_batch": (after.get("batch:sum") - before.get("batch:sum")) / batches if batches > 0 else None,
        "queue_depth": _gauge(during, "queue_depth"),
        "inflight": _gauge(during, "inflight"),
        "backend": {"by_code": {code: n for code, n in sorted(by_code.items()) if n},
                    "errors": sum(n for code, n in by_code.items() if code != "OK"),
                    "retries": after.get("backend_retries") - before.get("backend_retries")},
        "cpu_seconds": cpu,
        "cpu_ms_per_request": 1000.0 * cpu / requests if requests else None,
        "routes": routes,
        "callers": callers(before, after, during),
    }


def window(snapshots: Sequence[Snapshot], start: float, end: float) -> dict[str, float]:
    """Stage means between the snapshots nearest to `start` and `end` (Unix times); {} when the
    snapshots do not cover the window with two different reads."""
    if len(snapshots) < 2:
        return {}
    first = min(snapshots, key=lambda s: abs(s.at - start))
    last = min(snapshots, key=lambda s: abs(s.at - end))
    if last.at <= first.at:
        return {}
    return stage_means(first, last)


def write_history(snapshots: Sequence[Snapshot], path: Path) -> None:
    """One row per read: Unix time, then every key seen (counters as read, cumulative)."""
    keys = sorted({key for s in snapshots for key in s.values})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *keys])
        for s in snapshots:
            w.writerow([f"{s.at:.3f}", *(f"{s.get(key):g}" for key in keys)])
