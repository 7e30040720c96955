"""What a correct answer looks like, so the load test counts wrong answers as failures.

A server under load that answers fast but wrong (an empty prediction list, a label the model does
not have, scores out of order) must fail the run, not improve its latency figures. Every answer
the load test receives, over gRPC or REST, is turned into an `Answer` and checked against the
gateway's API (README.md, "API" and "Decisions") and against what `ListModels` said about the
models (`Catalogue`).

Plain data in, `InvalidAnswer` out: no Locust, no gRPC, so the rules are unit-testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

DEFAULT_UNCERTAIN_LABEL = "not sure"  # the gateway's default uncertain_label (README.md)
_SCORE_SLACK = 1e-4  # float32 probabilities may overshoot [0, 1] by rounding


class InvalidAnswer(Exception):
    """The server answered, but not what README.md ("API") says it answers; the message says what
    was wrong."""


@dataclass(frozen=True)
class Catalogue:
    """The models behind the gateway and their labels, as `ListModels` / `GET /v1/models` said."""

    labels: Mapping[str, frozenset[str]]
    uncertain_label: str = DEFAULT_UNCERTAIN_LABEL

    @classmethod
    def from_models(cls, models: Iterable[tuple[str, Iterable[str]]], uncertain_label: str,
                    required_model: str = "") -> "Catalogue":
        """Build from (name, labels) pairs; refuses a list that could not validate anything."""
        labels = {name: frozenset(names) for name, names in models}
        if not labels:
            raise InvalidAnswer("ListModels returned no models")
        empty = sorted(name for name, names in labels.items() if not names)
        if empty:
            raise InvalidAnswer(f"ListModels returned no labels for {', '.join(empty)}")
        if required_model and required_model not in labels:
            raise InvalidAnswer(f"ListModels does not list the model under test {required_model!r} "
                                f"(it lists {', '.join(sorted(labels))})")
        return cls(labels, uncertain_label)

    @classmethod
    def from_json(cls, body: Any, uncertain_label: str, required_model: str = "") -> "Catalogue":
        """From the JSON of `GET /v1/models` (`{"models": [{"name", "labels", ...}]}`)."""
        try:
            models = [(m["name"], m.get("labels", [])) for m in body["models"]]
        except (TypeError, KeyError) as exc:
            raise InvalidAnswer(f"GET /v1/models: unexpected JSON shape (missing {exc})") from None
        return cls.from_models(models, uncertain_label, required_model)


@dataclass(frozen=True)
class Answer:
    """One classification answer, whichever transport carried it."""

    model: str
    version: int
    label: str
    confident: bool
    predictions: Sequence[tuple[str, float]]

    @classmethod
    def from_proto(cls, msg: Any) -> "Answer":
        """From a `classifier.v1.ClassifyResponse`."""
        return cls(msg.model, int(msg.model_version), msg.label, bool(msg.confident),
                   [(p.label, float(p.score)) for p in msg.predictions])

    @classmethod
    def from_json(cls, body: Any) -> "Answer":
        """From the REST answer: the JSON of `ClassifyResponse` (protos/classifier/v1/classifier.proto)."""
        if not isinstance(body, dict):
            raise InvalidAnswer(f"expected a JSON object, got {type(body).__name__}")
        missing = [key for key in ("model", "model_version", "label", "confident", "predictions")
                   if key not in body]
        if missing:
            raise InvalidAnswer(f"answer lacks {', '.join(missing)}")
        try:
            # protobuf's JSON mapping writes int64 as a string; accept both spellings.
            version = int(body["model_version"])
            predictions = [(p["label"], float(p["score"])) for p in body["predictions"]]
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidAnswer(f"malformed answer: {exc}") from None
        return cls(body["model"], version, body["label"], body["confident"] is True, predictions)


def check_answer(answer: Answer, catalogue: Catalogue, model: str = "", top_k: int = 0) -> None:
    """Raise InvalidAnswer unless `answer` is a correct answer to a request for (`model`, `top_k`)."""
    if model and answer.model != model:
        raise InvalidAnswer(f"asked model {model!r}, answer is from {answer.model!r}")
    labels = catalogue.labels.get(answer.model)
    if labels is None:
        raise InvalidAnswer(f"answer names model {answer.model!r}, which ListModels does not list")
    if answer.version < 1:
        raise InvalidAnswer(f"model_version {answer.version} (versions are positive integers)")
    preds = answer.predictions
    if not preds:
        raise InvalidAnswer("no predictions")
    if top_k > 0 and len(preds) != min(top_k, len(labels)):
        raise InvalidAnswer(f"asked top_k={top_k}, got {len(preds)} predictions")
    unknown = sorted({label for label, _ in preds} - labels)
    if unknown:
        raise InvalidAnswer(f"predictions name labels the model does not have: {unknown}")
    scores = [score for _, score in preds]
    if any(not math.isfinite(s) or s < -_SCORE_SLACK or s > 1 + _SCORE_SLACK for s in scores):
        raise InvalidAnswer(f"scores outside [0, 1]: {scores}")
    if any(a < b for a, b in zip(scores, scores[1:])):
        raise InvalidAnswer(f"predictions not sorted by score: {scores}")
    if answer.confident and answer.label != preds[0][0]:
        raise InvalidAnswer(f"confident decision {answer.label!r} is not the top label {preds[0][0]!r}")
    if not answer.confident and answer.label != catalogue.uncertain_label:
        raise InvalidAnswer(f"unconfident decision is {answer.label!r}, expected the uncertain "
                            f"label {catalogue.uncertain_label!r}")


def check_count(what: str, expected: int, got: int) -> None:
    """Batch and stream answers come one per image, in order."""
    if got != expected:
        raise InvalidAnswer(f"{what}: sent {expected} images, got {got} answers")
