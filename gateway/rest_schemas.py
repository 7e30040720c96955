"""REST, described: the response models behind /openapi.json and the OpenAPI pieces the routes declare.

The handlers answer with the JSON of gateway/converters.py (and errors with GatewayError.to_body);
the models here describe that JSON for /docs and for client generators. They forbid extra fields,
their examples are made by the converters and by `to_body` themselves, and tests/gateway/test_gateway_rest.py
validates every example and real answers against the schemas the gateway serves, so the two
cannot drift apart unnoticed. The enumerations (error codes and reasons, decision reasons) are
taken from gateway/errors.py and gateway/thresholds.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat
from pydantic.json_schema import SkipJsonSchema

from gateway import converters
from gateway.errors import (TABLE, ErrorKind, InvalidImage, ModelNotFound, Overloaded, TooManyImages,
                            Unauthenticated)
from gateway.thresholds import CONFIDENT, REASONS, SMALL_MARGIN
from gateway.types import Classification, Decision, LabelScore

INT32_MAX = 2**31 - 1  # top_k is an int32 on the gRPC side; the same range here
INT64_MAX = 2**63 - 1  # versions are int64
STRICT = ConfigDict(extra="forbid", protected_namespaces=())

# What a client can see: every kind but CLIENT_GONE (its client left), plus UNIMPLEMENTED for a
# method a path does not have (rest_middleware.NoRoute).
_SEEN = [kind for kind in ErrorKind if kind is not ErrorKind.CLIENT_GONE]
ERROR_CODES = tuple(sorted({TABLE[kind][0].name for kind in _SEEN} | {"UNIMPLEMENTED"}))
ERROR_REASONS = tuple(kind.reason for kind in _SEEN)


# -- examples, made by the code that makes the real answers ------------------------------------------

EXAMPLE_REQUEST_ID = "3f2c9e0a5b7d4e1f8a6b2c4d0e9f1a7b"


def _classification(label: str, confident: bool, reason: str, scores: list[tuple[str, float]]) -> Classification:
    return Classification("fashion", 1, Decision(label, confident, tuple(LabelScore(*s) for s in scores), reason))


_CONFIDENT = _classification("Ankle boot", True, CONFIDENT, [("Ankle boot", 0.9375), ("Sneaker", 0.03125)])
_NOT_SURE = _classification("not sure", False, SMALL_MARGIN, [("Shirt", 0.53125), ("T-shirt/top", 0.4375)])
_INVALID_IMAGE = InvalidImage("not an image, or not one of the accepted formats (JPEG, PNG, WEBP)")
_ERRORS = [_INVALID_IMAGE, ModelNotFound("unknown model 'shoes'; this gateway serves fashion"),
           TooManyImages("65 images in one request; the limit is 64", metadata={"limit": "64"}),
           Overloaded("model fashion has 256 requests queued; retry in 0.40 s", retry_after=0.4,
                      metadata={"model": "fashion"}),
           Unauthenticated("this gateway needs an API key: send `authorization: Bearer <key>`")]


# -- responses ------------------------------------------------------------------------------------

class PredictionOut(BaseModel):
    model_config = STRICT

    label: str
    score: float = Field(ge=0.0, le=1.0)


class ClassifyOut(BaseModel):
    """The JSON of classifier.v1.ClassifyResponse."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [
        converters.classification_to_json(_CONFIDENT), converters.classification_to_json(_NOT_SURE)]})

    model: str
    model_version: int
    label: str = Field(description="the top label when the thresholds pass, else the uncertain label")
    confident: bool
    reason: Literal[REASONS] = Field(description="why the decision is what it is")
    predictions: list[PredictionOut] = Field(description="top-k, highest score first; a score that is not a "
                                                         "finite number (a broken model's NaN) is left out, and "
                                                         "the decision is then not confident (LOW_SCORE)")


class ErrorDetail(BaseModel):
    model_config = STRICT

    code: Literal[ERROR_CODES] = Field(description="the gRPC status name, e.g. INVALID_ARGUMENT")
    reason: Literal[ERROR_REASONS] | SkipJsonSchema[None] = Field(
        None, description="what a program branches on (the table in protos/classifier/v1/classifier.proto); "
                          "absent only on a 404 or 405 for a path or method the API does not have")
    message: str = Field(description="for people; never parse it")
    request_id: str = Field(description="the x-request-id of the request: quote it when reporting a problem")
    retry_after: NonNegativeFloat | SkipJsonSchema[None] = Field(
        None, description="only on errors a retry can cure: seconds until a retry may succeed (the "
                                "retry-after header has it in whole seconds, rounded up)")
    metadata: dict[str, str] | SkipJsonSchema[None] = Field(
        None, description="details such as the model, the version or the limit")


class ErrorOut(BaseModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [
        err.to_body(EXAMPLE_REQUEST_ID) for err in _ERRORS]})

    error: ErrorDetail


class BatchAnswerOut(ClassifyOut):
    """One image's answer in a batch."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [
        converters.outcome_to_json(_CONFIDENT, 0, "boot.png", EXAMPLE_REQUEST_ID)]})

    index: int = Field(description="the image's position in the request, from 0")
    id: str = Field(description="the file name of the image's part")


class BatchErrorOut(BaseModel):
    """One image's error in a batch: the other images are answered all the same."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [
        converters.outcome_to_json(_INVALID_IMAGE, 1, "notes.txt", EXAMPLE_REQUEST_ID)]})

    index: int = Field(description="the image's position in the request, from 0")
    id: str = Field(description="the file name of the image's part")
    error: ErrorDetail


class BatchOut(BaseModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"responses": [
        converters.outcome_to_json(_CONFIDENT, 0, "boot.png", EXAMPLE_REQUEST_ID),
        converters.outcome_to_json(_INVALID_IMAGE, 1, "notes.txt", EXAMPLE_REQUEST_ID),
        converters.outcome_to_json(_NOT_SURE, 2, "shirt.jpg", EXAMPLE_REQUEST_ID)]}]})

    responses: list[BatchAnswerOut | BatchErrorOut] = Field(description="one per image, in request order")


class ModelOut(BaseModel):
    model_config = STRICT

    name: str
    version: int
    labels: list[str]
    state: str = Field(description="AVAILABLE, LOADING, ... as the model server reports it")
    input: str = Field(description="the version's image input, HEIGHTxWIDTHxCHANNELS (every image is resized to "
                                   "it; shrinking a large photo to it before sending loses nothing); \"\" when no "
                                   "version is usable")


class ModelsOut(BaseModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"models": [{
        "name": "fashion", "version": 1, "state": "AVAILABLE", "input": "28x28x1",
        "labels": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]}]}]})

    models: list[ModelOut]


class FleetOut(BaseModel):
    """The model servers behind the gateway and what each serves, with every model's routing."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "backend": "dns:///model-server:8500", "balancing": "endpoints", "healthy_endpoints": 2,
        "endpoints": [{"address": "10.0.0.7:8500", "state": "healthy", "reason": None, "inflight": 1, "checked": True,
                       "models": {"fashion": [{"version": 1, "state": "AVAILABLE", "usable": True}]}}],
        "models": {"fashion": {"state": "AVAILABLE", "problem": None, "default_version": 1, "mode": "common",
                               "labels": {"stable": 1}, "canary": None, "shadow": None,
                               "versions": [{"version": 1, "endpoints": 2, "labels": ["stable"],
                                             "input": "28x28x1", "classes": 10}],
                               "max_batches_in_flight": 4}}}]})

    backend: str
    balancing: str = Field(description="endpoints (a channel per model server) or channel (one round_robin channel)")
    healthy_endpoints: int
    endpoints: list[dict[str, Any]] = Field(description="address, state (healthy|ejected), reason, inflight, checked, "
                                                         "models: {model: [{version, state, usable}]}")
    models: dict[str, dict[str, Any]] = Field(description="per model: state, problem, default_version, mode "
                                                          "(pinned|common|per_endpoint|none), labels, canary, "
                                                          "shadow, versions: [{version, endpoints, labels, input, classes}], "
                                                          "max_batches_in_flight (max_concurrent_batches "
                                                          "times the endpoints serving it)")


class ExampleOut(BaseModel):
    model_config = STRICT

    name: str = Field(description="path under the examples folder")
    url: str = Field(description="where to GET it, relative to the gateway's root")


class ExamplesOut(BaseModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"examples": [
        {"name": "fashion/ankle-boot.png", "url": "examples/fashion/ankle-boot.png"}]}]})

    examples: list[ExampleOut]


class HealthOut(BaseModel):
    model_config = STRICT

    status: Literal["ok"]


class ReadinessOut(BaseModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [
        {"ready": True, "draining": False, "models": {"fashion": "AVAILABLE"}}]})

    ready: bool = Field(description="the default model is available and the gateway is not draining")
    draining: bool
    models: dict[str, str] = Field(description="each model's state")


# -- what the routes declare -------------------------------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "INVALID_IMAGE (not an image, unsupported format, truncated, too many pixels) or INVALID_ARGUMENT "
         "(a bad parameter or header, a body without an image)",
    401: "UNAUTHENTICATED: no valid API key (this gateway requires one)",
    404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND",
    413: "TOO_LARGE: the body is over the limit; TOO_MANY_IMAGES: more images than the limit",
    429: "OVERLOADED: the queue is full; retry after `retry-after`",
    500: "INTERNAL: a bug; the request id finds it in the gateway's log",
    503: "UNAVAILABLE (model server down, model not loaded), CIRCUIT_OPEN or SHUTTING_DOWN; retry after `retry-after`",
    504: "DEADLINE_EXCEEDED: the request's deadline passed (`x-request-timeout`, else the gateway's request timeout)",
}
CLASSIFY_ERRORS = (400, 404, 413, 429, 503, 504)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for these error statuses, each with the error body."""
    return {status: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


_BINARY = {"type": "string", "format": "binary"}


def image_body(formats: list[str]) -> dict:
    """The request body of the single-image routes: multipart `image`, or the raw image."""
    types = [f"image/{name.lower()}" for name in formats]
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["image"],
                       "properties": {"image": {**_BINARY, "description": "the image file"}}},
            "encoding": {"image": {"contentType": ", ".join(types)}}},
        **{media_type: {"schema": _BINARY} for media_type in [*types, "application/octet-stream"]},
    }}}


def batch_body(formats: list[str], max_images: int) -> dict:
    """The request body of the batch routes: one multipart `image` part per image."""
    types = [f"image/{name.lower()}" for name in formats]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image"], "properties": {"image": {
            "type": "array", "minItems": 1, "maxItems": max_images, "items": _BINARY,
            "description": "one part per image, in order; each part's file name comes back as its answer's `id`"}}},
        "encoding": {"image": {"contentType": ", ".join(types)}}}}}}


# Components: response headers, request headers, the API key scheme (rest_openapi.py places them).
HEADERS = {
    "RequestId": {"description": "the request's id: the client's `x-request-id`, or one the gateway made",
                  "required": True, "schema": {"type": "string"}},
    "RetryAfter": {"description": "whole seconds until a retry may succeed, rounded up: 0 means at once "
                                  "(SHUTTING_DOWN: retry now, another replica answers)", "required": True,
                   "schema": {"type": "integer", "minimum": 0}},
    "WwwAuthenticate": {"description": "the scheme to use: Bearer", "required": True, "schema": {"type": "string"}},
    "ServerTiming": {"description": "milliseconds per stage: decode, queue_wait, predict, decide",
                     "schema": {"type": "string"}},
}
PARAMETERS = {
    "RequestId": {"name": "x-request-id", "in": "header", "required": False,
                  "description": "the request's id in logs and answers: 1-128 of [A-Za-z0-9._:/+=-]",
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:/+=-]{1,128}$"}},
    "RequestTimeout": {"name": "x-request-timeout", "in": "header", "required": False,
                       "description": "the request's deadline in seconds (capped to the gateway's request "
                                      "timeout, its default); also accepted as gRPC's `grpc-timeout`, e.g. 2500m",
                       "schema": {"type": "number", "minimum": 0}, "example": 2.5},
    "CanaryKey": {"name": "x-canary-key", "in": "header", "required": False,
                  "description": "a stable key (a user or tenant id) that keeps the caller on one side of a "
                                 "canary split", "schema": {"type": "string"}},
    "ClientId": {"name": "x-client-id", "in": "header", "required": False,
                 "description": "the calling service's name, for fair queueing, metrics and logs (an API key's "
                                "name takes precedence): 1-64 of [A-Za-z0-9._:/@+=-]",
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:/@+=-]{1,64}$"}},
}
SECURITY_SCHEMES = {"bearerAuth": {"type": "http", "scheme": "bearer",
                                   "description": "an API key, when the gateway has them (`api_keys`)"}}


def ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


CLASSIFY_PARAMETERS = {"parameters": [ref("parameters", name) for name in ("RequestTimeout", "CanaryKey", "ClientId")]}
CLASSIFY_OK = {200: {"headers": {"server-timing": ref("headers", "ServerTiming")}}}
