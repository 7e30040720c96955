"""The SLO verdict: did the run meet its latency, error-rate and throughput limits?

Limits are on the whole run's aggregate (every request of every kind, as Locust's "Aggregated"
row): p95 and p99 latency, the share of failed requests (transport errors and wrong answers) and
the average requests per second. A limit left unset is not checked. Beyond the limits, a run fails
when it made no request at all or when the load test's own code raised: a broken load test must
not pass.

Locust's percentiles come from its response-time histogram (exact below 100 ms, two significant
digits above), the same figures its HTML report shows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SloLimits:
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_percent: float | None = None
    min_rps: float | None = None

    def describe(self) -> str:
        parts = [
            f"p95 <= {self.p95_ms:g} ms" if self.p95_ms is not None else "",
            f"p99 <= {self.p99_ms:g} ms" if self.p99_ms is not None else "",
            f"errors <= {self.max_error_percent:g} %" if self.max_error_percent is not None else "",
            f"throughput >= {self.min_rps:g} req/s" if self.min_rps is not None else "",
        ]
        return ", ".join(p for p in parts if p) or "no limits"


@dataclass(frozen=True)
class Measured:
    requests: int
    failures: int
    p95_ms: float
    p99_ms: float
    rps: float
    exceptions: int = 0  # raised by the load test's own code

    @property
    def error_percent(self) -> float:
        return 100.0 * self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_locust(cls, total: Any, exceptions: int) -> "Measured":
        """From Locust's aggregated `StatsEntry` (environment.stats.total)."""
        return cls(
            requests=total.num_requests, failures=total.num_failures,
            p95_ms=float(total.get_response_time_percentile(0.95) or 0.0),
            p99_ms=float(total.get_response_time_percentile(0.99) or 0.0),
            rps=float(total.total_rps), exceptions=exceptions,
        )


@dataclass(frozen=True)
class Verdict:
    limits: SloLimits
    measured: Measured
    misses: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.misses

    def render(self) -> str:
        m = self.measured
        head = "PASS" if self.passed else "FAIL"
        lines = [
            f"SLO verdict: {head} ({self.limits.describe()})",
            f"  measured: {m.requests} requests, {m.error_percent:.2f} % failed, p95 {m.p95_ms:g} ms, "
            f"p99 {m.p99_ms:g} ms, {m.rps:.1f} req/s",
        ]
        lines += [f"  missed: {miss}" for miss in self.misses]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"passed": self.passed, "misses": self.misses, "limits": asdict(self.limits),
                "measured": asdict(self.measured) | {"error_percent": self.measured.error_percent}}


def evaluate(limits: SloLimits, m: Measured) -> Verdict:
    misses: list[str] = []
    if m.requests == 0:
        misses.append("no requests were made (is the target up? see the log)")
    if m.exceptions:
        misses.append(f"the load test's own code raised {m.exceptions} exception(s) (see the log)")
    if limits.p95_ms is not None and m.requests and m.p95_ms > limits.p95_ms:
        misses.append(f"p95 latency {m.p95_ms:g} ms > limit {limits.p95_ms:g} ms")
    if limits.p99_ms is not None and m.requests and m.p99_ms > limits.p99_ms:
        misses.append(f"p99 latency {m.p99_ms:g} ms > limit {limits.p99_ms:g} ms")
    if limits.max_error_percent is not None and m.error_percent > limits.max_error_percent:
        misses.append(f"error rate {m.error_percent:.2f} % > limit {limits.max_error_percent:g} % "
                      f"({m.failures} of {m.requests} requests failed)")
    if limits.min_rps is not None and m.rps < limits.min_rps:
        misses.append(f"throughput {m.rps:.1f} req/s < minimum {limits.min_rps:g} req/s")
    return Verdict(limits, m, misses)


def write_verdict(path: Path, verdict: Verdict, requests: list[dict]) -> None:
    """The run's outcome as JSON, for the summary: the verdict and the final per-request figures."""
    record = verdict.to_json() | {"requests": requests}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_verdict(path: Path) -> dict | None:
    """What `write_verdict` wrote, or None when the run ended before writing it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
