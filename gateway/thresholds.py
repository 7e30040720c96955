"""The answer rules: how a model's scores become a decision (CONTRACT §4).

Pure and lean (pydantic + stdlib): the gateway applies these rules to every answer, and tests apply
the very same function to scores computed in-process with TensorFlow, so "the gateway's decision"
and "the model's decision" cannot drift apart.

Two rules, chosen by the number of labels the model reports:

* two labels: a band on the positive class's score. `> upper` gives the positive label,
  `< lower` the other one, anything in between (edges included) is uncertain.
* more labels: the top score must be `>= min_score` and beat the runner-up by `>= min_margin`.

Scores arrive as float32 (TensorProto DT_FLOAT), so the comparisons run in float32 too: a score
that is "0.35" on the wire is exactly the threshold 0.35, not a hair below it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_UNCERTAIN_LABEL = "not sure"


def _f32(value: float) -> float:
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


class Thresholds(BaseModel):
    """Both rules for one model; which one applies depends on how many labels the model has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    binary: BinaryBand = Field(default_factory=BinaryBand)
    multiclass: MulticlassRule = Field(default_factory=MulticlassRule)


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class Decision:
    """The answer for one image: the decided label and the top-k predictions, highest first."""

    label: str
    confident: bool
    predictions: tuple[Prediction, ...]


def check_labels(labels: Sequence[str], thresholds: Thresholds) -> None:
    """Raise ValueError when the rules cannot apply to a model with these labels."""
    if not labels:
        raise ValueError("the model reports no labels")
    positive = thresholds.binary.positive_label
    if len(labels) == 2 and positive is not None and positive not in labels:
        raise ValueError(f"positive_label {positive!r} is not one of the model's labels {list(labels)}")


def top_predictions(labels: Sequence[str], scores: Sequence[float], top_k: int) -> tuple[Prediction, ...]:
    """The `top_k` highest scores (ties keep the model's label order)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return tuple(Prediction(labels[i], float(scores[i])) for i in order[:max(top_k, 0)])


def decide(labels: Sequence[str], scores: Sequence[float], thresholds: Thresholds,
           uncertain_label: str = DEFAULT_UNCERTAIN_LABEL, top_k: int = 5) -> Decision:
    """Apply the model's rule to one row of scores; `labels[i]` names `scores[i]`."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    check_labels(labels, thresholds)
    predictions = top_predictions(labels, scores, top_k)
    if len(labels) == 2:
        label = _binary_label(labels, scores, thresholds.binary)
    else:
        label = _multiclass_label(labels, scores, thresholds.multiclass)
    if label is None:
        return Decision(uncertain_label, False, predictions)
    return Decision(label, True, predictions)


def _binary_label(labels: Sequence[str], scores: Sequence[float], band: BinaryBand) -> str | None:
    positive = labels.index(band.positive_label) if band.positive_label is not None else 1
    score = _f32(scores[positive])
    if score > _f32(band.upper):
        return labels[positive]
    if score < _f32(band.lower):
        return labels[1 - positive]
    return None


def _multiclass_label(labels: Sequence[str], scores: Sequence[float], rule: MulticlassRule) -> str | None:
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    top1 = _f32(scores[ranked[0]])
    top2 = _f32(scores[ranked[1]]) if len(ranked) > 1 else 0.0
    if top1 >= _f32(rule.min_score) and _f32(top1 - top2) >= _f32(rule.min_margin):
        return labels[ranked[0]]
    return None
