"""`python -m gateway.canary_report`: PROMOTE or HOLD a shadowed candidate version, from a gateway's metrics.

    python -m gateway.canary_report --metrics-url http://127.0.0.1:8080/metrics \\
        [--model fashion] [--min-agreement 0.99] [--min-samples 500]

Reads the shadow comparison counters (gateway/shadow.py) from a gateway's GET /metrics and, per
model and candidate version, prints how often the candidate agreed with the answers callers got:
same decision (label and confident, "not sure" included), same top-1 label, and the mean score
difference. The verdict is PROMOTE when every candidate has at least `--min-samples` comparisons
and a decision agreement of at least `--min-agreement`, else HOLD with the reason. Exit code 0 for
PROMOTE, 1 for HOLD, 2 when the metrics cannot be read. With several gateway replicas, point it at
each (their counters are per process) or at Prometheus' federation endpoint.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

COMPARISONS = "gateway_shadow_comparisons"
DELTA = "gateway_shadow_score_delta"
SKIPPED = "gateway_shadow_skipped"


@dataclass
class Candidate:
    model: str
    version: str
    samples: float = 0.0
    same_decision: float = 0.0
    same_top1: float = 0.0
    delta_sum: float = 0.0
    delta_count: float = 0.0

    @property
    def decision_agreement(self) -> float:
        return self.same_decision / self.samples if self.samples else 0.0

    @property
    def top1_agreement(self) -> float:
        return self.same_top1 / self.samples if self.samples else 0.0

    @property
    def mean_delta(self) -> float:
        return self.delta_sum / self.delta_count if self.delta_count else 0.0


def parse(text: str, model: str | None = None) -> tuple[list[Candidate], dict[str, float]]:
    """The candidates found in a /metrics page, and skipped shadow copies by reason."""
    candidates: dict[tuple[str, str], Candidate] = {}
    skipped: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if model is not None and labels.get("model") != model:
                continue
            if sample.name == f"{COMPARISONS}_total":
                c = candidates.setdefault((labels["model"], labels["candidate_version"]),
                                          Candidate(labels["model"], labels["candidate_version"]))
                c.samples += sample.value
                c.same_decision += sample.value if labels["decision"] == "same" else 0.0
                c.same_top1 += sample.value if labels["top1"] == "same" else 0.0
            elif sample.name in (f"{DELTA}_sum", f"{DELTA}_count"):
                c = candidates.setdefault((labels["model"], labels["candidate_version"]),
                                          Candidate(labels["model"], labels["candidate_version"]))
                if sample.name.endswith("_sum"):
                    c.delta_sum += sample.value
                else:
                    c.delta_count += sample.value
            elif sample.name == f"{SKIPPED}_total":
                skipped[labels["reason"]] = skipped.get(labels["reason"], 0.0) + sample.value
    return sorted(candidates.values(), key=lambda c: (c.model, c.version)), skipped


def verdict(candidates: list[Candidate], min_agreement: float, min_samples: int) -> tuple[bool, list[str]]:
    """(promote?, the reasons to hold)."""
    if not candidates:
        return False, ["no shadow comparisons yet: is `models.<name>.shadow` set and traffic flowing?"]
    reasons = []
    for c in candidates:
        if c.samples < min_samples:
            reasons.append(f"{c.model} v{c.version}: {c.samples:.0f} comparisons, fewer than {min_samples}")
        elif c.decision_agreement < min_agreement:
            reasons.append(f"{c.model} v{c.version}: decisions agree {c.decision_agreement:.2%}, "
                           f"below {min_agreement:.2%}")
    return not reasons, reasons


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.canary_report",
                                     description="PROMOTE or HOLD a shadowed candidate version, from a gateway's metrics.")
    parser.add_argument("--metrics-url", required=True, help="the gateway's metrics, e.g. http://127.0.0.1:8080/metrics")
    parser.add_argument("--model", help="only this model (default: every model with a shadow)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="least share of same decisions to promote (default 0.99)")
    parser.add_argument("--min-samples", type=int, default=500, help="least comparisons to judge (default 500)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the metrics (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.min_agreement <= 1.0:
        print("canary_report: --min-agreement is a share between 0 and 1", file=sys.stderr)
        return 2
    try:
        response = httpx.get(args.metrics_url, timeout=args.timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"canary_report: cannot read {args.metrics_url}: {exc}", file=sys.stderr)
        return 2
    candidates, skipped = parse(response.text, args.model)
    promote, reasons = verdict(candidates, args.min_agreement, args.min_samples)
    print(f"{'model':<16} {'candidate':>9} {'compared':>9} {'same decision':>14} {'same top-1':>11} {'mean |Δscore|':>14}")
    for c in candidates:
        print(f"{c.model:<16} {c.version:>9} {c.samples:>9.0f} {c.decision_agreement:>14.2%} "
              f"{c.top1_agreement:>11.2%} {c.mean_delta:>14.4f}")
    if skipped:
        print("skipped shadow copies: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(skipped.items())))
    print("PROMOTE" if promote else "HOLD")
    for reason in reasons:
        print(f"  {reason}")
    return 0 if promote else 1


if __name__ == "__main__":
    sys.exit(main())
