"""Conversions between the core's results and the wire: classifier.v1 protos and REST JSON.

One place, so the gRPC answer and the REST answer for the same image are the same answer: the JSON
has the field names of the proto (README, "API") and its scores are the float32 values the proto
carries.
"""

from __future__ import annotations

import struct

import gateway.generated  # noqa: F401  (puts the generated tree on sys.path)
from classifier.v1 import classifier_pb2 as pb

from gateway.core import Classification, ClassifyInput, ModelStatus


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def input_from_proto(request: pb.ClassifyRequest, route_key: str | None = None) -> ClassifyInput:
    return ClassifyInput(model=request.model, image=request.image, top_k=request.top_k, version=request.version,
                         version_label=request.version_label, route_key=route_key)


def classification_to_proto(result: Classification) -> pb.ClassifyResponse:
    d = result.decision
    return pb.ClassifyResponse(
        model=result.model, model_version=result.version, label=d.label, confident=d.confident,
        predictions=[pb.Prediction(label=p.label, score=p.score) for p in d.predictions],
    )


def classification_to_json(result: Classification) -> dict:
    d = result.decision
    return {
        "model": result.model, "model_version": result.version, "label": d.label,
        "confident": d.confident,
        "predictions": [{"label": p.label, "score": _f32(p.score)} for p in d.predictions],
    }


def model_to_proto(model: ModelStatus) -> pb.ModelInfo:
    return pb.ModelInfo(name=model.name, version=model.version, labels=list(model.labels), state=model.state)


def model_to_json(model: ModelStatus) -> dict:
    return {"name": model.name, "version": model.version, "labels": list(model.labels), "state": model.state}
