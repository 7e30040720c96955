"""The load test's own options, declared once for both places that parse them.

`loadtest/locustfile.py` adds them to Locust's parser (so `locust -f loadtest/locustfile.py
--slo-p95-ms 200 ...` works, and Locust's `LOCUST_*` environment variables too); `loadtest/run.py`
adds the same ones to its parser and hands the values on to Locust with `to_argv`. One table, so
the two cannot drift apart in names or defaults.
"""

from __future__ import annotations

import argparse
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from loadtest import slo

SHAPE_NAMES = ("steady", "step", "spike")
# Who calls (--callers). mix: gRPC and REST users, every one the same caller to the gateway (its
# address). quiet-flood: one user calling Classify one image at a time as caller QUIET, every other
# user calling Classify as caller FLOOD (the x-client-id metadata the gateway's fair queueing goes by).
QUIET_FLOOD = "quiet-flood"
CALLER_MIXES = ("mix", QUIET_FLOOD)
QUIET, FLOOD = "quiet", "flood"
DEFAULT_GATEWAY_GRPC_PORT = 50051  # the gateway's default grpc_port (README.md, "Configuration")


@dataclass(frozen=True)
class Option:
    dest: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None
    metavar: str | None = None
    repeat: bool = False  # may be given several times; the value is a list (None when never given)

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "LOCUST_" + self.dest.upper()


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _slo_rule(text: str) -> str:
    """Checked here, so a mistyped rule stops the run before anything starts; passed on as text."""
    try:
        slo.parse_rule(text)
    except slo.SloSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("grpc_target", str, "", "gateway gRPC HOST:PORT (default: the host of --host, port 50051)",
           metavar="HOST:PORT"),
    Option("model", str, "", "model to classify with (default: the gateway's default model)",
           metavar="NAME"),
    Option("uncertain_label", str, "not sure", "the label the gateway answers when unsure",
           metavar="LABEL"),
    Option("large_share", _share, 0.1, "share of requests that send a large photo (0..1)",
           metavar="SHARE"),
    Option("batch_images", _positive_int, 8, "images per ClassifyBatch call and per ClassifyStream",
           metavar="N"),
    Option("top_k", _positive_int, 3, "predictions asked for in each request", metavar="K"),
    Option("rpc_timeout_s", _non_negative, 10.0, "client deadline of each request, seconds (0: none)",
           metavar="SECONDS"),
    Option("shape", str, "steady", "load shape: steady (SLO runs), step (find the knee), spike",
           choices=SHAPE_NAMES),
    Option("steps", _positive_int, 5, "number of stages of the step shape", metavar="N"),
    Option("callers", str, "mix",
           f"who calls: mix (gRPC and REST users, one caller to the gateway) or quiet-flood (1 user "
           f"calling Classify one image at a time as x-client-id {QUIET}, the others flooding Classify as "
           f"{FLOOD}; reported as 'Classify ({QUIET})' and 'Classify ({FLOOD})')", choices=CALLER_MIXES),
    Option("slo_p95_ms", _non_negative, 500.0, "SLO: p95 latency limit, ms", metavar="MS"),
    Option("slo_p99_ms", _non_negative, 1000.0, "SLO: p99 latency limit, ms", metavar="MS"),
    Option("slo_error_percent", _non_negative, 1.0, "SLO: most failed requests, percent",
           metavar="PERCENT"),
    Option("slo_min_rps", _non_negative, 1.0, "SLO: least requests per second over the run",
           metavar="RPS"),
    Option("slo", _slo_rule, None,
           "SLO of one route or transport, '[grpc|rest] [ROUTE]:LIMIT[,LIMIT...]' with LIMIT "
           "pNN<=MS[ms|s], errors<=PERCENT[%%] or rps>=RATE, e.g. 'grpc Classify:p95<=150ms'; repeatable",
           metavar="RULE", repeat=True),
    Option("slo_file", str, "", "YAML file of per-route/transport SLOs (selector: limits, as --slo)",
           metavar="PATH"),
    Option("verdict_file", str, "", "write the SLO verdict and final figures as JSON to this file",
           metavar="PATH"),
)


def caller_request(rpc: str, caller: str) -> str:
    """The request name of a caller's calls in the statistics: 'Classify (quiet)'. An SLO route
    'Classify' covers every caller's; 'Classify (quiet)' one caller's (loadtest/slo.py Selector)."""
    return f"{rpc} ({caller})"


QUIET_CLASSIFY, FLOOD_CLASSIFY = caller_request("Classify", QUIET), caller_request("Classify", FLOOD)


def add_options(parser: Any, *, env: bool = False, skip: Sequence[str] = ()) -> None:
    """Add the options (but those in `skip`) to an argparse-compatible parser; Locust's takes
    `env_var` too (`env=True`: LOCUST_SLO_P95_MS and so on)."""
    for opt in OPTIONS:
        if opt.dest in skip:
            continue
        shown = f" (default: {opt.default})" if opt.default not in ("", None) else ""
        kwargs: dict[str, Any] = dict(type=opt.type, default=opt.default, choices=opt.choices,
                                      metavar=opt.metavar, help=opt.help + shown)
        if opt.repeat:
            kwargs["action"] = "append"
        if env:
            kwargs["env_var"] = opt.env_var
        parser.add_argument(opt.flag, **kwargs)


def to_argv(values: Mapping[str, Any]) -> list[str]:
    """The flags that pass `values` (dest -> value) on to another parser of the same options."""
    argv: list[str] = []
    for opt in OPTIONS:
        value = values.get(opt.dest, opt.default)
        if value is None:
            continue
        for item in (value if opt.repeat else [value]):
            argv += [opt.flag, str(item)]
    return argv


def slo_rules(values: Any) -> list[slo.Rule]:
    """The per-route/transport rules of parsed options: --slo-file's first, then each --slo.
    Raises slo.SloSpecError."""
    rules = slo.load_rules(values.slo_file) if values.slo_file else []
    return rules + [slo.parse_rule(text) for text in values.slo or ()]


def default_grpc_target(http_url: str) -> str:
    """The gateway's gRPC address when only its HTTP URL is known: same host, the default port."""
    host = urllib.parse.urlsplit(http_url).hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{DEFAULT_GATEWAY_GRPC_PORT}"
