"""Conversions between the core's results and the wire: classifier.v1 protos, google.rpc statuses
and REST JSON.

One place, so the gRPC answer and the REST answer for the same image are the same answer: the JSON
has the field names of the proto (README, "API") and its scores are the float32 values the proto
carries; an error is the same code, reason, message and retry hint on both transports. A score that
is not a finite number (a broken model's NaN) is left out of the predictions on both (JSON has no
NaN; the decision is already "not sure", reason LOW_SCORE: gateway/thresholds.py).
"""

from __future__ import annotations

import math

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb

from gateway.errors import GatewayError
from gateway.status import error_to_status
from gateway.thresholds import f32
from gateway.types import Classification, Decision, ImageRequest, LabelScore, ModelSummary

# ModelInfo.state_code for the state names the fleet reports.
_STATE_CODES = {"START": pb.ModelInfo.STATE_START, "LOADING": pb.ModelInfo.STATE_LOADING,
                "AVAILABLE": pb.ModelInfo.STATE_AVAILABLE, "UNLOADING": pb.ModelInfo.STATE_UNLOADING,
                "END": pb.ModelInfo.STATE_END, "UNAVAILABLE": pb.ModelInfo.STATE_UNREACHABLE,
                "NOT_FOUND": pb.ModelInfo.STATE_NOT_SERVED, "UNUSABLE": pb.ModelInfo.STATE_UNUSABLE}

Outcome = Classification | GatewayError


def input_from_proto(request: pb.ClassifyRequest, route_key: str | None = None, caller: str = "") -> ImageRequest:
    return ImageRequest(model=request.model, image=request.image, top_k=request.top_k, version=request.version,
                         version_label=request.version_label, route_key=route_key, caller=caller,
                         id=request.id[:128])


# -- answers --------------------------------------------------------------------------------------

def _shown(decision: Decision) -> list[LabelScore]:
    """The predictions an answer carries: those with a finite score."""
    return [p for p in decision.predictions if math.isfinite(p.score)]


def classification_to_proto(result: Classification, index: int = 0, id: str = "") -> pb.ClassifyResponse:
    d = result.decision
    return pb.ClassifyResponse(
        model=result.model, model_version=result.version, label=d.label, confident=d.confident,
        predictions=[pb.Prediction(label=p.label, score=p.score) for p in _shown(d)],
        reason=pb.ClassifyResponse.Reason.Value(d.reason), id=id, index=index,
    )


def outcome_to_proto(outcome: Outcome, index: int, id: str, request_id: str) -> pb.ClassifyResponse:
    """A batch or stream entry: the classification, or only id, index and the error."""
    if isinstance(outcome, GatewayError):
        return pb.ClassifyResponse(id=id, index=index, error=error_to_status(outcome, request_id))
    return classification_to_proto(outcome, index, id)


def classification_to_json(result: Classification) -> dict:
    d = result.decision
    return {
        "model": result.model, "model_version": result.version, "label": d.label,
        "confident": d.confident, "reason": d.reason,
        "predictions": [{"label": p.label, "score": f32(p.score)} for p in _shown(d)],
    }


def outcome_to_json(outcome: Outcome, index: int, id: str, request_id: str) -> dict:
    """A REST batch entry: {index, id, ...the answer} or {index, id, error: {...}}."""
    head = {"index": index, "id": id}
    if isinstance(outcome, GatewayError):
        return {**head, **outcome.to_body(request_id)}
    return {**head, **classification_to_json(outcome)}


def model_to_proto(model: ModelSummary) -> pb.ModelInfo:
    info = pb.ModelInfo(name=model.name, version=model.version, labels=list(model.labels), state=model.state,
                        state_code=_STATE_CODES.get(model.state, pb.ModelInfo.STATE_UNSPECIFIED))
    if model.input is not None:
        info.input.height, info.input.width, info.input.channels = (model.input.height, model.input.width,
                                                                    model.input.channels)
    return info


def model_to_json(model: ModelSummary) -> dict:
    """GET /v1/models' entry; `input` as GET /v1/fleet writes it ("28x28x1"), "" when not known."""
    return {"name": model.name, "version": model.version, "labels": list(model.labels), "state": model.state,
            "input": "" if model.input is None else model.input.text}
