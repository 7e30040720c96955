"""The answer rules: how a model's scores become a decision (README, "Decisions").

Pure and lean (pydantic + stdlib): the gateway applies these rules to every answer, and tests apply
the very same function to scores computed in-process with TensorFlow, so "the gateway's decision"
and "the model's decision" cannot drift apart.

First the out-of-distribution guard, when the model exports an OOD score (training/ood.py): an
image whose `ood_score` is above the threshold (the model's own exported `ood_threshold`, or
`ood.max_score` when the settings override it) is uncertain, whatever its class scores say.
Then a row with a class score that is not a finite number (NaN, an infinity: a broken model or
input) is uncertain with reason LOW_SCORE - there is no score to trust - and its top-k lists such
scores last (the transports leave them out: gateway/converters.py).
Then one of two rules, chosen by the number of labels the model reports:

* two labels: a band on the positive class's score. `> upper` gives the positive label,
  `< lower` the other one, anything in between (edges included) is uncertain.
* more labels: the top score must be `>= min_score` and beat the runner-up by `>= min_margin`.

Every decision carries its reason, named as the `classifier.v1.ClassifyResponse.Reason` values:
CONFIDENT, OUT_OF_DISTRIBUTION, LOW_SCORE, SMALL_MARGIN (multi-class) or IN_BAND (binary).

Scores arrive as float32 (TensorProto DT_FLOAT), so the comparisons run in float32 too: a score
that is "0.35" on the wire is exactly the threshold 0.35, not a hair below it.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.types import CONFIDENT, Decision, LabelScore

DEFAULT_UNCERTAIN_LABEL = "not sure"

# Why a decision is what it is: the names of classifier.v1.ClassifyResponse.Reason.
OUT_OF_DISTRIBUTION = "OUT_OF_DISTRIBUTION"
LOW_SCORE = "LOW_SCORE"
SMALL_MARGIN = "SMALL_MARGIN"
IN_BAND = "IN_BAND"
REASONS = (CONFIDENT, OUT_OF_DISTRIBUTION, LOW_SCORE, SMALL_MARGIN, IN_BAND)


def f32(value: float) -> float:
    """Round a Python float to the nearest float32, the precision scores travel in."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


class BinaryBand(BaseModel):
    """Thresholds for a two-class model: a band on the positive class's score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upper: float = Field(0.65, ge=0.0, le=1.0,
                         description="positive label when the positive score is > upper")
    lower: float = Field(0.35, ge=0.0, le=1.0,
                         description="negative label when the positive score is < lower")
    positive_label: str | None = Field(
        None, description="the positive class; default: the model's second label (index 1)")

    @model_validator(mode="after")
    def _band_is_ordered(self) -> "BinaryBand":
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not exceed upper ({self.upper})")
        return self


class MulticlassRule(BaseModel):
    """Thresholds for a model with more than two classes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_score: float = Field(0.5, ge=0.0, le=1.0, description="top-1 score must be >= this")
    min_margin: float = Field(0.1, ge=0.0, le=1.0,
                              description="top-1 minus top-2 score must be >= this")


class OodGuard(BaseModel):
    """The out-of-distribution guard, for models that export `ood_score` and `ood_threshold`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="answer uncertain (OUT_OF_DISTRIBUTION) when the model's ood_score "
                                            "is above the threshold; false ignores the score")
    max_score: float | None = Field(None, ge=0.0,
                                    description="the threshold instead of the model's own calibrated "
                                                "ood_threshold; an image is out of distribution when ood_score > this")


class Thresholds(BaseModel):
    """The rules for one model: the OOD guard, then the binary or multi-class rule by label count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    binary: BinaryBand = Field(default_factory=BinaryBand)
    multiclass: MulticlassRule = Field(default_factory=MulticlassRule)
    ood: OodGuard = Field(default_factory=OodGuard)


def check_labels(labels: Sequence[str], thresholds: Thresholds) -> None:
    """Raise ValueError when the rules cannot apply to a model with these labels."""
    if not labels:
        raise ValueError("the model reports no labels")
    positive = thresholds.binary.positive_label
    if len(labels) == 2 and positive is not None and positive not in labels:
        raise ValueError(f"positive_label {positive!r} is not one of the model's labels {list(labels)}")


def ranked(scores: Sequence[float]) -> list[int]:
    """The indexes of `scores`, highest first (ties keep the model's label order); scores that are
    not finite numbers (NaN, infinities) come last, in label order."""
    return sorted(range(len(scores)), key=lambda i: (0, -scores[i]) if math.isfinite(scores[i]) else (1, 0))


def top_predictions(labels: Sequence[str], scores: Sequence[float], top_k: int) -> tuple[LabelScore, ...]:
    """The `top_k` highest scores, as `ranked` orders them."""
    return tuple(LabelScore(labels[i], float(scores[i])) for i in ranked(scores)[:max(top_k, 0)])


def out_of_distribution(ood_score: float | None, ood_threshold: float | None, guard: OodGuard) -> bool:
    """Whether the guard rejects an image: its score is above the threshold in force.

    The threshold in force is `guard.max_score` when set, else the model's `ood_threshold`. No
    score (a model without the output), no threshold in force, or a disabled guard: never
    rejected. A NaN score is rejected (nothing proves the image is in distribution).
    """
    if not guard.enabled or ood_score is None:
        return False
    limit = guard.max_score if guard.max_score is not None else ood_threshold
    if limit is None:
        return False
    score = f32(ood_score)
    return score != score or score > f32(limit)


def decide(labels: Sequence[str], scores: Sequence[float], thresholds: Thresholds,
           uncertain_label: str = DEFAULT_UNCERTAIN_LABEL, top_k: int = 5,
           ood_score: float | None = None, ood_threshold: float | None = None) -> Decision:
    """Apply the model's rules to one row of scores; `labels[i]` names `scores[i]`.

    `ood_score` and `ood_threshold` are the model's outputs of those names for this image (None
    for a model without them). The OOD guard goes first: an image it rejects is uncertain with
    reason OUT_OF_DISTRIBUTION, whatever the class scores say. Then a row with a class score that
    is not a finite number is uncertain with reason LOW_SCORE.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    check_labels(labels, thresholds)
    predictions = top_predictions(labels, scores, top_k)
    if out_of_distribution(ood_score, ood_threshold, thresholds.ood):
        return Decision(uncertain_label, False, predictions, OUT_OF_DISTRIBUTION)
    if not all(math.isfinite(score) for score in scores):
        return Decision(uncertain_label, False, predictions, LOW_SCORE)
    if len(labels) == 2:
        label, reason = _binary_label(labels, scores, thresholds.binary)
    else:
        label, reason = _multiclass_label(labels, scores, thresholds.multiclass)
    if label is None:
        return Decision(uncertain_label, False, predictions, reason)
    return Decision(label, True, predictions, reason)


def _binary_label(labels: Sequence[str], scores: Sequence[float], band: BinaryBand) -> tuple[str | None, str]:
    positive = labels.index(band.positive_label) if band.positive_label is not None else 1
    score = f32(scores[positive])
    if score > f32(band.upper):
        return labels[positive], CONFIDENT
    if score < f32(band.lower):
        return labels[1 - positive], CONFIDENT
    return None, IN_BAND


def _multiclass_label(labels: Sequence[str], scores: Sequence[float], rule: MulticlassRule) -> tuple[str | None, str]:
    order = ranked(scores)
    top1 = f32(scores[order[0]])
    top2 = f32(scores[order[1]]) if len(order) > 1 else 0.0
    if top1 < f32(rule.min_score):
        return None, LOW_SCORE
    if f32(top1 - top2) < f32(rule.min_margin):
        return None, SMALL_MARGIN
    return labels[order[0]], CONFIDENT
