"""The SLO verdict: did the run meet its latency, error-rate and throughput limits?

Two kinds of limit, judged together:

* the aggregate limits (`SloLimits`): p95 and p99 latency, the share of failed requests (transport
  errors and wrong answers) and the average requests per second of every request of every kind,
  as Locust's "Aggregated" row. A limit left unset is not checked.
* per-route and per-transport limits (`Rule`), written as `[grpc|rest] [ROUTE]:LIMIT[,LIMIT...]`
  on the command line (`--slo 'grpc Classify:p95<=150ms'`) or in a YAML file (`load_rules`). A
  rule that matches no request of the run is a miss, so a misspelt route cannot pass unseen.

Beyond the limits, a run fails when it made no request at all or when the load test's own code
raised: a broken load test must not pass.

Locust's percentiles come from its response-time histogram (exact below 100 ms, two significant
digits above), the same figures its HTML report shows. Parsing raises `SloSpecError` with the
offending text and the expected syntax.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

TRANSPORTS = ("grpc", "rest")
_TRANSPORT_WORDS = {"grpc": "grpc", "rest": "rest", "http": "rest"}
_ALL_WORDS = ("", "*", "all")
SYNTAX = ("'[grpc|rest] [ROUTE]:LIMIT[,LIMIT...]' with LIMIT one of pNN<=MS[ms|s], errors<=PERCENT[%], "
          "rps>=RATE; e.g. 'grpc Classify:p95<=150ms,errors<=1%'")


class SloSpecError(ValueError):
    """An SLO rule (flag or file) that cannot be read; the message quotes it and shows the syntax."""


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


# -- per-route and per-transport rules -----------------------------------------------------------

def transport_of(request_type: str) -> str:
    """The transport of a Locust stats entry: the gRPC users report type `grpc`, REST users the
    HTTP method."""
    return "grpc" if request_type.lower() == "grpc" else "rest"


@dataclass(frozen=True)
class Selector:
    """Which requests a rule judges: one transport, one route, one route of one transport, or all.

    A route matches Locust's request name exactly, or every variant of it: `/v1/classify` covers
    `/v1/classify (multipart)` and `/v1/classify (raw body)`.
    """

    transport: str | None = None
    route: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Selector":
        text = text.strip()
        if text.lower() in _ALL_WORDS:
            return cls()
        first, _, rest = text.partition(" ")
        transport = _TRANSPORT_WORDS.get(first.lower())
        if transport is None:
            return cls(None, text)
        return cls(transport, rest.strip() or None)

    def matches(self, transport: str, name: str) -> bool:
        if self.transport is not None and transport != self.transport:
            return False
        return self.route is None or name == self.route or name.startswith(self.route + " (")

    def describe(self) -> str:
        return " ".join(p for p in (self.transport, self.route) if p) or "all requests"


_LIMIT = re.compile(r"^(?P<metric>p\d+(?:\.\d+)?|errors|rps)\s*(?P<op><=|>=|<|>|=)\s*"
                    r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|%|/s|req/s|rps)?$", re.IGNORECASE)
_UNITS = {"p": ("ms", "s"), "errors": ("%",), "rps": ("/s", "req/s", "rps")}


@dataclass(frozen=True)
class Limit:
    """One limit: `pNN` latency in ms (at most), `errors` in percent of requests (at most), or
    `rps` in requests per second (at least)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Limit":
        m = _LIMIT.match(text.strip())
        if m is None:
            raise SloSpecError(f"{text.strip()!r} is not a limit")
        metric, op, unit = m["metric"].lower(), m["op"], (m["unit"] or "").lower()
        value = float(m["value"])
        kind = "p" if metric.startswith("p") else metric
        if unit and unit not in _UNITS[kind]:
            raise SloSpecError(f"{text.strip()!r}: unit {unit!r} does not fit {metric}")
        wanted = ">=" if kind == "rps" else "<="
        if op != wanted:
            raise SloSpecError(f"{text.strip()!r}: {metric} takes {wanted} ({'a floor' if kind == 'rps' else 'a ceiling'})")
        if kind == "p":
            quantile = float(metric[1:])
            if not 0 < quantile <= 100:
                raise SloSpecError(f"{text.strip()!r}: the percentile must be within (0, 100]")
            metric = f"p{quantile:g}"
            value *= 1000.0 if unit == "s" else 1.0
        if kind == "errors" and value > 100:
            raise SloSpecError(f"{text.strip()!r}: errors is a percentage (0..100)")
        return cls(metric, value)

    @property
    def quantile(self) -> float | None:
        return float(self.metric[1:]) / 100.0 if self.metric.startswith("p") else None

    def describe(self) -> str:
        if self.metric == "errors":
            return f"errors <= {self.value:g} %"
        if self.metric == "rps":
            return f"throughput >= {self.value:g} req/s"
        return f"{self.metric} <= {self.value:g} ms"

    def measured(self, f: "Figures") -> float:
        if self.metric == "errors":
            return f.error_percent
        if self.metric == "rps":
            return f.rps
        return f.percentiles_ms[self.metric]

    def miss(self, f: "Figures") -> str | None:
        """What was missed, or None when the limit held."""
        value = self.measured(f)
        if self.metric == "errors":
            return (None if value <= self.value else
                    f"error rate {value:.2f} % > limit {self.value:g} % ({f.failures} of {f.requests} failed)")
        if self.metric == "rps":
            return None if value >= self.value else f"throughput {value:.1f} req/s < minimum {self.value:g} req/s"
        return None if value <= self.value else f"{self.metric} latency {value:g} ms > limit {self.value:g} ms"


@dataclass(frozen=True)
class Rule:
    selector: Selector
    limits: tuple[Limit, ...]

    def describe(self) -> str:
        return f"{self.selector.describe()}: {', '.join(lim.describe() for lim in self.limits)}"


def parse_rule(text: str) -> Rule:
    """`[grpc|rest] [ROUTE]:LIMIT[,LIMIT...]` -> Rule. Raises SloSpecError."""
    selector, sep, limits = text.rpartition(":")
    if not sep or not limits.strip():
        raise SloSpecError(f"{text!r}: expected {SYNTAX}")
    try:
        parsed = tuple(Limit.parse(part) for part in limits.split(",") if part.strip())
    except SloSpecError as exc:
        raise SloSpecError(f"{text!r}: {exc}; expected {SYNTAX}") from None
    if not parsed:
        raise SloSpecError(f"{text!r}: no limit given; expected {SYNTAX}")
    return Rule(Selector.parse(selector), parsed)


def load_rules(path: Path) -> list[Rule]:
    """Rules from a YAML file: a mapping of selector to limits (a string, or a list of strings),

        grpc Classify: p95<=150ms, p99<=400ms
        rest: [p95<=200ms, errors<=1%]

    or a list of whole rules in the flag's syntax. Raises SloSpecError (also for an unreadable file).
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SloSpecError(f"SLO file {path}: {exc}") from None
    if data is None:
        return []
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        specs = list(data)
    elif isinstance(data, dict):
        specs = []
        for selector, limits in data.items():
            if isinstance(limits, str):
                limits = [limits]
            if not isinstance(limits, list) or not all(isinstance(item, str) for item in limits):
                raise SloSpecError(f"SLO file {path}: {selector!r} must map to a limit string or a list of them")
            specs.append(f"{selector or ''}:{','.join(limits)}")
    else:
        raise SloSpecError(f"SLO file {path}: expected a mapping of selector to limits, or a list of rules")
    try:
        return [parse_rule(spec) for spec in specs]
    except SloSpecError as exc:
        raise SloSpecError(f"SLO file {path}: {exc}") from None


@dataclass(frozen=True)
class Figures:
    """What a group of requests measured: the figures a Rule's limits read."""

    requests: int
    failures: int
    rps: float
    percentiles_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def error_percent(self) -> float:
        return 100.0 * self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_locust(cls, entry: Any, limits: Iterable[Limit]) -> "Figures":
        """From a Locust `StatsEntry` (one route, or several merged with `extend`)."""
        quantiles = {lim.metric: lim.quantile for lim in limits if lim.quantile is not None}
        return cls(entry.num_requests, entry.num_failures, float(entry.total_rps),
                   {name: float(entry.get_response_time_percentile(q) or 0.0) for name, q in quantiles.items()})


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    figures: Figures | None  # None: no request of the run matched the rule
    misses: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.misses

    def to_json(self) -> dict:
        f = self.figures
        return {"rule": self.rule.describe(), "transport": self.rule.selector.transport,
                "route": self.rule.selector.route, "passed": self.passed, "misses": list(self.misses),
                "limits": [{"metric": lim.metric, "limit": lim.value, "describe": lim.describe(),
                            "measured": None if f is None else lim.measured(f),
                            "held": None if f is None else lim.miss(f) is None} for lim in self.rule.limits],
                "measured": None if f is None else asdict(f) | {"error_percent": f.error_percent}}


def judge(rule: Rule, figures: Figures | None, seen: Sequence[str] = ()) -> RuleResult:
    """Judge one rule on the figures of the requests it selects (None when it selected none)."""
    name = rule.selector.describe()
    if figures is None or not figures.requests:
        known = f" (requests seen: {', '.join(seen)})" if seen else ""
        return RuleResult(rule, figures, (f"{name}: no request of this run matched{known}",))
    return RuleResult(rule, figures, tuple(f"{name}: {miss}" for lim in rule.limits
                                           if (miss := lim.miss(figures)) is not None))


# -- the verdict ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    limits: SloLimits
    measured: Measured
    misses: list[str] = field(default_factory=list)  # the aggregate's
    rules: tuple[RuleResult, ...] = ()

    @property
    def all_misses(self) -> list[str]:
        return self.misses + [miss for r in self.rules for miss in r.misses]

    @property
    def passed(self) -> bool:
        return not self.all_misses

    def render(self) -> str:
        m = self.measured
        head = "PASS" if self.passed else "FAIL"
        lines = [
            f"SLO verdict: {head} ({self.limits.describe()}"
            + (f"; {len(self.rules)} per-route/transport rule(s)" if self.rules else "") + ")",
            f"  measured: {m.requests} requests, {m.error_percent:.2f} % failed, p95 {m.p95_ms:g} ms, "
            f"p99 {m.p99_ms:g} ms, {m.rps:.1f} req/s",
        ]
        for r in self.rules:
            if r.passed and r.figures is not None:  # the missed ones follow, one line per missed limit
                shown = ", ".join(f"{lim.metric} {lim.measured(r.figures):.4g}" for lim in r.rule.limits)
                lines.append(f"  held: {r.rule.describe()} (measured {shown})")
        lines += [f"  missed: {miss}" for miss in self.all_misses]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"passed": self.passed, "misses": self.all_misses, "limits": asdict(self.limits),
                "measured": asdict(self.measured) | {"error_percent": self.measured.error_percent},
                "slos": [r.to_json() for r in self.rules]}


def evaluate(limits: SloLimits, m: Measured, rules: Sequence[RuleResult] = ()) -> Verdict:
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
    return Verdict(limits, m, misses, tuple(rules))


def write_verdict(path: Path, verdict: Verdict, requests: list[dict], transports: list[dict] = ()) -> None:
    """The run's outcome as JSON, for the summary and later comparisons: the verdict, the final
    per-request figures and the same per transport."""
    record = verdict.to_json() | {"requests": requests, "transports": list(transports)}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_verdict(path: Path) -> dict | None:
    """What `write_verdict` wrote, or None when the run ended before writing it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
