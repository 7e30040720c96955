"""The answer rules (gateway/thresholds.py; README, "Decisions"), table-tested, exact edges included,
and what the converters make of a decision whose scores are not all finite numbers.

Pure functions: imported in-process (no TensorFlow, no server).
"""

from __future__ import annotations

import json
import math
import struct

import pytest
from pydantic import ValidationError

from gateway.converters import classification_to_json, classification_to_proto
from gateway.thresholds import (REASONS, BinaryBand, MulticlassRule, OodGuard, Thresholds, check_labels,
                                decide)
from gateway.types import Classification, LabelScore

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast


def f32(x: float) -> float:
    """What a score looks like after travelling as a float32 tensor."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


BINARY = ["cat", "coffee"]          # positive class by default: index 1, "coffee"
DEFAULT = Thresholds()               # band 0.65 / 0.35; multi-class 0.5 / 0.1


@pytest.mark.parametrize("positive_score, label, confident", [
    (0.99, "coffee", True),
    (0.650001, "coffee", True),
    (0.65, "not sure", False),        # exactly upper: not > upper
    (0.5, "not sure", False),
    (0.35, "not sure", False),        # exactly lower: not < lower
    (0.349999, "cat", True),
    (0.0, "cat", True),
])
def test_binary_band_edges(positive_score, label, confident):
    scores = [f32(1 - positive_score), f32(positive_score)]
    d = decide(BINARY, scores, DEFAULT, "not sure", top_k=2)
    assert (d.label, d.confident) == (label, confident)


@pytest.mark.parametrize("positive_score", [0.65, 0.35])
def test_band_edges_hold_for_float32_scores(positive_score):
    # float32(0.35) < 0.35 as doubles; the rule compares in float32 so the edge stays uncertain.
    assert f32(0.35) < 0.35
    d = decide(BINARY, [f32(1 - positive_score), f32(positive_score)], DEFAULT, "unsure", top_k=1)
    assert (d.label, d.confident) == ("unsure", False)


def test_binary_positive_label_can_be_the_first_class():
    rules = Thresholds(binary=BinaryBand(upper=0.8, lower=0.2, positive_label="cat"))
    assert decide(BINARY, [0.9, 0.1], rules).label == "cat"
    assert decide(BINARY, [0.1, 0.9], rules).label == "coffee"
    assert decide(BINARY, [0.8, 0.2], rules).label == "not sure"   # edges: 0.8 not > 0.8
    assert decide(BINARY, [0.2, 0.8], rules).label == "not sure"   # 0.2 not < 0.2


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def row(**scores: float) -> list[float]:
    out = [0.0] * len(FASHION)
    for key, value in scores.items():
        out[FASHION.index(key.replace("_", " "))] = value
    return out


@pytest.mark.parametrize("scores, label, confident", [
    (row(Bag=0.9, Coat=0.1), "Bag", True),
    (row(Bag=0.5, Coat=0.3), "Bag", True),           # exactly min_score
    (row(Bag=0.49, Coat=0.1), "not sure", False),    # below min_score
    (row(Bag=0.55, Coat=0.46), "not sure", False),   # margin 0.09 < 0.1
    (row(Bag=0.6, Coat=0.5), "Bag", True),           # margin 0.1 in float32 arithmetic
    (row(Ankle_boot=0.34, Sneaker=0.33, Sandal=0.33), "not sure", False),
])
def test_multiclass_rule(scores, label, confident):
    d = decide(FASHION, [f32(s) for s in scores], DEFAULT, "not sure", top_k=3)
    assert (d.label, d.confident) == (label, confident)


@pytest.mark.parametrize("labels, scores, reason", [
    (FASHION, row(Bag=0.9, Coat=0.1), "CONFIDENT"),
    (FASHION, row(Bag=0.49, Coat=0.1), "LOW_SCORE"),
    (FASHION, row(Bag=0.45, Coat=0.44), "LOW_SCORE"),      # both fail: the score is named first
    (FASHION, row(Bag=0.55, Coat=0.46), "SMALL_MARGIN"),
    (BINARY, [0.1, 0.9], "CONFIDENT"),
    (BINARY, [0.9, 0.1], "CONFIDENT"),
    (BINARY, [0.5, 0.5], "IN_BAND"),
])
def test_every_decision_says_why(labels, scores, reason):
    d = decide(labels, [f32(s) for s in scores], DEFAULT)
    assert d.reason == reason and d.confident == (reason == "CONFIDENT")
    assert reason in REASONS


SURE_BAG = row(Bag=0.9, Coat=0.1)
DISABLED, OVERRIDE = Thresholds(ood=OodGuard(enabled=False)), Thresholds(ood=OodGuard(max_score=5.0))


@pytest.mark.parametrize("labels, scores, rules, ood_score, ood_threshold, label, reason", [
    (FASHION, SURE_BAG, DEFAULT, 1.0, 2.0, "Bag", "CONFIDENT"),
    (FASHION, SURE_BAG, DEFAULT, 2.0, 2.0, "Bag", "CONFIDENT"),                # at the threshold: not over it
    (FASHION, SURE_BAG, DEFAULT, 2.0000002, 2.0, "not sure", "OUT_OF_DISTRIBUTION"),  # one float32 step over
    (FASHION, SURE_BAG, DEFAULT, 40.0, 2.0, "not sure", "OUT_OF_DISTRIBUTION"),
    (FASHION, row(Bag=0.3, Coat=0.3), DEFAULT, 40.0, 2.0, "not sure", "OUT_OF_DISTRIBUTION"),  # OOD goes first
    (BINARY, [0.05, 0.95], DEFAULT, 40.0, 2.0, "not sure", "OUT_OF_DISTRIBUTION"),
    (BINARY, [0.5, 0.5], DEFAULT, 1.0, 2.0, "not sure", "IN_BAND"),
    (FASHION, SURE_BAG, DEFAULT, float("nan"), 2.0, "not sure", "OUT_OF_DISTRIBUTION"),
    (FASHION, SURE_BAG, DEFAULT, 40.0, None, "Bag", "CONFIDENT"),              # no threshold: no guard
    (FASHION, SURE_BAG, DISABLED, 40.0, 2.0, "Bag", "CONFIDENT"),
    (FASHION, SURE_BAG, OVERRIDE, 4.0, 2.0, "Bag", "CONFIDENT"),               # the override replaces 2.0
    (FASHION, SURE_BAG, OVERRIDE, 5.5, 2.0, "not sure", "OUT_OF_DISTRIBUTION"),
    (FASHION, SURE_BAG, OVERRIDE, 5.5, None, "not sure", "OUT_OF_DISTRIBUTION"),
])
def test_out_of_distribution_guard(labels, scores, rules, ood_score, ood_threshold, label, reason):
    d = decide(labels, [f32(s) for s in scores], rules, "not sure", top_k=2,
               ood_score=f32(ood_score), ood_threshold=None if ood_threshold is None else f32(ood_threshold))

    assert (d.label, d.confident, d.reason) == (label, reason == "CONFIDENT", reason)
    assert len(d.predictions) == 2 and d.predictions[0].score == f32(max(scores))  # the scores are still shown


def test_ood_guard_settings_are_validated():
    assert Thresholds().ood == OodGuard(enabled=True, max_score=None)
    assert Thresholds.model_validate({"ood": {"max_score": 3}}).ood.max_score == 3.0
    with pytest.raises(ValidationError):
        OodGuard(max_score=-1.0)
    with pytest.raises(ValidationError):
        Thresholds.model_validate({"ood": {"threshold": 3}})


@pytest.mark.parametrize("top1, top2, confident", [
    (0.5, 0.25, True),          # margin exactly 0.25 (exact in binary floating point)
    (0.5, 0.25000003, False),   # one float32 step less margin
    (0.49999997, 0.0, False),   # one float32 step under min_score
])
def test_multiclass_exact_edges(top1, top2, confident):
    rules = Thresholds(multiclass=MulticlassRule(min_score=0.5, min_margin=0.25))
    d = decide(FASHION, [f32(s) for s in row(Bag=top1, Coat=top2)], rules)
    assert (d.label, d.confident) == (("Bag", True) if confident else ("not sure", False))


def test_multiclass_thresholds_are_configurable():
    strict = Thresholds(multiclass=MulticlassRule(min_score=0.95, min_margin=0.5))
    assert decide(FASHION, row(Bag=0.9, Coat=0.1), strict).label == "not sure"
    lax = Thresholds(multiclass=MulticlassRule(min_score=0.0, min_margin=0.0))
    assert decide(FASHION, row(Bag=0.2, Coat=0.1), lax).label == "Bag"
    assert decide(FASHION, row(Bag=0.2, Coat=0.2), lax).label == "Coat"  # a tie: the model's order


def test_top_k_is_sorted_highest_first_and_bounded():
    scores = row(Bag=0.5, Coat=0.3, Dress=0.15, Shirt=0.05)
    d = decide(FASHION, scores, DEFAULT, top_k=3)
    assert d.predictions == (LabelScore("Bag", 0.5), LabelScore("Coat", 0.3), LabelScore("Dress", 0.15))
    assert len(decide(FASHION, scores, DEFAULT, top_k=100).predictions) == len(FASHION)
    ties = decide(FASHION, [0.1] * 10, DEFAULT, top_k=10)
    assert [p.label for p in ties.predictions] == FASHION  # ties keep the model's order


def test_uncertain_label_is_configurable_and_predictions_still_returned():
    d = decide(FASHION, row(Bag=0.3, Coat=0.3), DEFAULT, "unsure", top_k=2)
    assert d.label == "unsure" and not d.confident
    assert {p.label for p in d.predictions} == {"Bag", "Coat"}


def test_invalid_rules_are_refused():
    with pytest.raises(ValidationError, match="must not exceed upper"):
        BinaryBand(upper=0.3, lower=0.6)
    with pytest.raises(ValidationError):
        MulticlassRule(min_score=1.5)
    with pytest.raises(ValueError, match="positive_label 'dog'"):
        check_labels(BINARY, Thresholds(binary=BinaryBand(positive_label="dog")))
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        decide(BINARY, [0.1, 0.2, 0.7], DEFAULT)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("labels, scores", [
    (FASHION, row(Bag=NAN, Coat=0.1)),                 # a NaN top score is not confident
    (FASHION, row(Bag=0.9, Coat=NAN)),                 # nor is a sure Bag beside a NaN: the row is broken
    (FASHION, [NAN] * 10),
    (FASHION, row(Bag=INF, Coat=0.1)),
    (FASHION, row(Bag=0.9, Coat=-INF)),
    (BINARY, [0.05, NAN]),
    (BINARY, [NAN, 0.95]),
])
def test_scores_that_are_not_finite_numbers_are_uncertain_with_low_score(labels, scores):
    d = decide(labels, scores, DEFAULT, "not sure", top_k=3)
    assert (d.label, d.confident, d.reason) == ("not sure", False, "LOW_SCORE")
    finite = [p.score for p in d.predictions if math.isfinite(p.score)]
    assert finite == sorted(finite, reverse=True)
    assert all(math.isfinite(p.score) for p in d.predictions[:len(finite)])  # the others come last


def test_a_nan_row_ranks_its_finite_scores_first():
    d = decide(FASHION, row(Bag=NAN, Coat=0.3, Dress=0.6), DEFAULT, top_k=10)
    assert [p.label for p in d.predictions[:3]] == ["Dress", "Coat", "T-shirt/top"]
    assert d.predictions[-1].label == "Bag" and math.isnan(d.predictions[-1].score)


def test_the_transports_leave_out_scores_that_are_not_finite():
    """REST answers with JSON that has no NaN (allow_nan=False would fail the whole answer); gRPC the same list."""
    d = decide(FASHION, row(Bag=NAN, Coat=0.3, Dress=INF), DEFAULT, top_k=10)
    result = Classification("fashion", 1, d)
    body = classification_to_json(result)
    json.dumps(body, allow_nan=False)  # raises ValueError on a NaN or an infinity
    assert (body["label"], body["reason"], body["confident"]) == ("not sure", "LOW_SCORE", False)
    assert [p["label"] for p in body["predictions"]] == ["Coat", *(l for l in FASHION if l not in ("Coat", "Bag", "Dress"))]
    message = classification_to_proto(result)
    assert [(p.label, p.score) for p in message.predictions] == [(p["label"], p["score"]) for p in body["predictions"]]
