"""How the answer rules behave on held-out data: coverage, accuracy when confident, OOD rejection.

The decisions are the gateway's own (`gateway.thresholds.decide`, a pure module), applied to what
the exported model computes, so the figures in a training report are the figures of the service:

* `coverage`: the share of images answered with a label (confident), the rest are "not sure";
* `accuracy` (when confident): the share of those labels that are right;
* on an out-of-distribution set (training.oodset): the share the OOD guard rejects and the share
  answered "not sure" for any reason.

`judge` returns plain numbers (for report.json) and the curves the report plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.thresholds import MulticlassRule, OodGuard, Thresholds, decide

MIN_SCORES = (0.5, 0.6, 0.7, 0.8, 0.9)  # rows of the selective-accuracy table (multi-class models)
CURVE_POINTS = 60


def rule_passes(probabilities: np.ndarray, labels: Sequence[str], thresholds: Thresholds) -> np.ndarray:
    """Whether the class-score rule alone (no OOD guard) answers each row confidently."""
    rules = thresholds.model_copy(update={"ood": OodGuard(enabled=False)})
    return np.array([decide(labels, row.tolist(), rules, top_k=1).confident for row in probabilities], bool)


def selective(confident: np.ndarray, correct: np.ndarray) -> dict:
    """Coverage and accuracy when confident (NaN when nothing is confident)."""
    count = int(confident.sum())
    return {"coverage": float(confident.mean()) if len(confident) else float("nan"),
            "accuracy": float(correct[confident].mean()) if count else float("nan"), "confident": count}


@dataclass
class Judgement:
    """Everything the report shows about the decision rules."""

    numbers: dict
    #: (coverage, accuracy) pairs: the OOD threshold swept, the default class-score rule kept
    ood_curve: list[tuple[float, float]] = field(default_factory=list)
    #: the same with the top-score threshold swept instead, OOD guard at its threshold
    score_curve: list[tuple[float, float]] = field(default_factory=list)
    chosen: tuple[float, float] = (float("nan"), float("nan"))


def judge(labels: Sequence[str], probabilities: np.ndarray, truth: np.ndarray, ood_scores: np.ndarray,
          threshold: float, ood_set: dict | None = None, thresholds: Thresholds | None = None) -> Judgement:
    """Judge the default rules plus the OOD guard at `threshold` on a labelled held-out split.

    `ood_set`, when given, holds `groups` (a group name per image), `names`, `probabilities` and
    `ood_scores` of the out-of-distribution images.
    """
    thresholds = thresholds or Thresholds()
    correct = probabilities.argmax(axis=1) == truth
    rule = rule_passes(probabilities, labels, thresholds)
    inside = np.float32(ood_scores) <= np.float32(threshold)
    numbers: dict = {
        "threshold": float(threshold), "count": int(len(truth)),
        "in_distribution_pass": float(inside.mean()) if len(inside) else float("nan"),
        "rules_only": selective(rule, correct), "with_ood_guard": selective(rule & inside, correct),
    }
    if len(labels) > 2:
        table = []
        for min_score in MIN_SCORES:
            rules = thresholds.model_copy(update={"multiclass": MulticlassRule(
                min_score=min_score, min_margin=thresholds.multiclass.min_margin)})
            passes = rule_passes(probabilities, labels, rules)
            table.append({"min_score": min_score, "min_margin": thresholds.multiclass.min_margin,
                          "rules_only": selective(passes, correct), "with_ood_guard": selective(passes & inside, correct)})
        numbers["table"] = table
    judgement = Judgement(numbers=numbers, chosen=(numbers["with_ood_guard"]["coverage"],
                                                   numbers["with_ood_guard"]["accuracy"]))
    if len(truth):
        for q in np.linspace(0.5, 1.0, CURVE_POINTS):
            cut = np.quantile(ood_scores, q)
            point = selective(rule & (ood_scores <= cut), correct)
            judgement.ood_curve.append((point["coverage"], point["accuracy"]))
        top = probabilities.max(axis=1)
        for cut in np.quantile(top, np.linspace(0.0, 0.5, CURVE_POINTS)):
            point = selective((top >= cut) & inside, correct)
            judgement.score_curve.append((point["coverage"], point["accuracy"]))
    if ood_set is not None:
        numbers["ood_set"] = _ood_set(labels, ood_set, threshold, thresholds)
    return judgement


def _ood_set(labels: Sequence[str], ood_set: dict, threshold: float, thresholds: Thresholds) -> dict:
    groups, names = np.asarray(ood_set["groups"]), list(ood_set["names"])
    rows = [decide(labels, probs.tolist(), thresholds, top_k=1, ood_score=float(score), ood_threshold=threshold)
            for probs, score in zip(ood_set["probabilities"], ood_set["ood_scores"])]
    rejected = np.array([d.reason == "OUT_OF_DISTRIBUTION" for d in rows], bool)
    unsure = np.array([not d.confident for d in rows], bool)

    def share(mask: np.ndarray) -> dict:
        return {"count": int(mask.sum()), "ood_rejected": float(rejected[mask].mean()),
                "not_sure": float(unsure[mask].mean())}

    return {
        "all": share(np.ones(len(rows), bool)),
        "groups": {group: share(groups == group) for group in dict.fromkeys(groups.tolist())},
        "photos": [{"name": name, "ood_score": float(score), "label": d.label, "reason": d.reason,
                    "top": d.predictions[0].label, "top_score": d.predictions[0].score}
                   for name, group, score, d in zip(names, groups, ood_set["ood_scores"], rows) if group == "photo"],
    }
