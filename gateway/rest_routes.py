"""REST, the routes: thin, like the gRPC servicer (gateway/grpc_service.py).

Each classify route reads the request (rest_requests.py), calls the core, and answers with the
converters' JSON; errors are raised as GatewayErrors and answered by rest_middleware.py. Every
classify takes its deadline from `x-request-timeout` (or `grpc-timeout`), capped to the gateway's
request timeout, and its caller and canary route key from the request record the middleware made.
A client that hangs up has its classification cancelled, the model server call included, as a
gRPC client's cancellation does. The query's version and version_label are checked by the core
(gateway/routing.py), so a bad one gets the answer gRPC gives; top_k's range is checked here first.

    POST /v1/classify, /v1/models/{model}:classify          one image; ?top_k= &version= &version_label=
    POST /v1/models/{model}/versions/{version}:classify     one image, that version
    POST /v1/models/{model}/labels/{label}:classify         one image, the version the label names
    POST /v1/classify:batch, /v1/models/{model}:classifyBatch   several `image` parts; per-item answers
    GET  /v1/models, /v1/fleet, /v1/examples, /healthz, /readyz, /metrics, / (the web page)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from gateway import converters
from gateway.core import GatewayCore
from gateway.errors import GatewayError
from gateway.logs import RequestRecord
from gateway.metrics import Metrics
from gateway.rest_requests import (image_from_body, images_from_body, read_body, request_timeout,
                                   unless_client_leaves)
from gateway.rest_schemas import (CLASSIFY_ERRORS, CLASSIFY_OK, CLASSIFY_PARAMETERS, INT32_MAX, INT64_MAX, BatchOut,
                                  ClassifyOut, ExamplesOut, FleetOut, HealthOut, ModelsOut, ReadinessOut, batch_body,
                                  error_responses, image_body)
from gateway.routing import MAX_LABEL_CHARS, VersionRequest, named_version
from gateway.settings import Settings
from gateway.types import ImageRequest

PLACEHOLDER_PAGE = ("The web page is not installed (gateway/static/index.html is missing).\n"
                    "The API works: POST an image to /v1/classify; see /docs.\n")
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}

_TOP_K = Query(0, ge=0, le=INT32_MAX, description="how many predictions to return; 0 means the configured default")
# version and version_label: their limits are documented here and checked by the core, as for gRPC.
_VERSION = Query(0, le=INT64_MAX, json_schema_extra={"minimum": 0},
                 description="a model version to use; 0 means the gateway's choice")
_VERSION_LABEL = Query("", json_schema_extra={"maxLength": MAX_LABEL_CHARS},
                       description="a version label of the gateway's settings (stable, canary, ...); not together "
                                   "with version")
_MODEL = PathParam(description="a model the gateway fronts (GET /v1/models)")


class ClassifyQuery:
    """The query of /v1/classify, /v1/models/{model}:classify and the batch routes."""

    def __init__(self, top_k: int = _TOP_K, version: int = _VERSION, version_label: str = _VERSION_LABEL):
        self.top_k, self.version, self.label = top_k, version, version_label


QueryOf = Annotated[ClassifyQuery, Depends()]


def add_routes(app: FastAPI, settings: Settings, service: GatewayCore, metrics: Metrics,
               static_dir: Path) -> None:
    single = dict(response_model=ClassifyOut, openapi_extra={**image_body(settings.allowed_formats),
                                                             **CLASSIFY_PARAMETERS},
                  responses={**error_responses(*CLASSIFY_ERRORS), **CLASSIFY_OK}, tags=["classify"])
    batch = dict(response_model=BatchOut, openapi_extra={
        **batch_body(settings.allowed_formats, settings.max_images_per_request), **CLASSIFY_PARAMETERS},
        responses=error_responses(*CLASSIFY_ERRORS), tags=["classify"])

    def classify_input(record: RequestRecord, image: bytes, top_k: int, version: int, label: str,
                       id: str = "") -> ImageRequest:
        return ImageRequest(record.model, image, top_k, version, label, record.route_key, record.caller, id)

    async def classify(request: Request, model: str, top_k: int, version: int = 0, label: str = "") -> JSONResponse:
        record: RequestRecord = request.state.record
        deadline = service.deadline(request_timeout(request.headers))
        record.model = service.resolve_model(model)
        body = await read_body(request, settings.max_body_bytes, deadline)
        image = await image_from_body(request, body, settings.max_body_bytes)
        record.images = 1
        work = service.classify(classify_input(record, image, top_k, version, label), deadline)
        result = await unless_client_leaves(request, work)
        record.version = result.version
        record.add_stages(result.stages)
        return JSONResponse(converters.classification_to_json(result),
                            headers={"server-timing": server_timing(result.stages)})

    def check_version(name: str, query: ClassifyQuery) -> None:
        """The query's version or label, checked once for a whole batch with the core's rules:
        InvalidArgument (gateway/routing.py's VersionRequest), VersionNotFound for a label the
        model does not define or a version no model server serves (GET /v1/fleet's view of it)."""
        wanted = VersionRequest(query.version, query.label)
        if wanted.version or wanted.label:
            fleet = service.fleet()["models"][name]
            named_version(name, wanted, fleet["labels"], frozenset(v["version"] for v in fleet["versions"]))

    async def classify_batch(request: Request, model: str, query: ClassifyQuery) -> JSONResponse:
        """One answer per image, in order; a failed image answers with its own error, the others go on.
        What the query names applies to every image, so a bad top_k, version or label fails the call."""
        record: RequestRecord = request.state.record
        deadline = service.deadline(request_timeout(request.headers))
        record.model = service.resolve_model(model)
        body = await read_body(request, settings.max_body_bytes, deadline)
        images = await images_from_body(request, body, settings.max_body_bytes, settings.max_images_per_request)
        record.images = len(images)
        check_version(record.model, query)
        inputs = [classify_input(record, image, query.top_k, query.version, query.label, id) for id, image in images]
        outcomes = await unless_client_leaves(request, service.classify_many(inputs, deadline))
        for outcome in outcomes:
            if not isinstance(outcome, GatewayError):
                record.version = outcome.version
                record.add_stages(outcome.stages)
        return JSONResponse({"responses": [converters.outcome_to_json(outcome, index, item.id, record.request_id)
                                           for index, (item, outcome) in enumerate(zip(inputs, outcomes))]})

    @app.post("/v1/classify", operation_id="classify", summary="Classify an image with the default model", **single)
    async def classify_default(request: Request, query: QueryOf) -> JSONResponse:
        """Body: multipart field `image`, or the raw image with an `image/*` content type."""
        return await classify(request, "", query.top_k, query.version, query.label)

    @app.post("/v1/models/{model}:classify", operation_id="classifyWithModel",
              summary="Classify an image with the named model", **single)
    async def classify_with_model(request: Request, query: QueryOf, model: str = _MODEL) -> JSONResponse:
        """Body: multipart field `image`, or the raw image with an `image/*` content type."""
        return await classify(request, model, query.top_k, query.version, query.label)

    @app.post("/v1/models/{model}/versions/{version}:classify", operation_id="classifyWithVersion",
              summary="Classify an image with one version of the named model", **single)
    async def classify_with_version(request: Request, model: str = _MODEL,
                                    version: int = PathParam(ge=1, le=INT64_MAX, description="the model version"),
                                    top_k: int = _TOP_K) -> JSONResponse:
        """404 when no model server serves that version (the message names the versions served)."""
        return await classify(request, model, top_k, version=version)

    @app.post("/v1/models/{model}/labels/{label}:classify", operation_id="classifyWithLabel",
              summary="Classify an image with the version a label of the named model points at", **single)
    async def classify_with_label(request: Request, model: str = _MODEL,
                                  label: str = PathParam(description="a label defined in the gateway's settings"),
                                  top_k: int = _TOP_K) -> JSONResponse:
        """404 for a label the model's settings do not define (the message names the labels)."""
        return await classify(request, model, top_k, label=label)

    @app.post("/v1/classify:batch", operation_id="classifyBatch",
              summary="Classify several images with the default model, one answer per image", **batch)
    async def classify_batch_default(request: Request, query: QueryOf) -> JSONResponse:
        """Body: one multipart part named `image` per image. Each answer is the image's decision or its
        own error (`index`, `id`, `error`); the call fails as a whole only for what concerns all of it:
        authentication, the model, the query (top_k, version, version_label: INVALID_ARGUMENT or
        VERSION_NOT_FOUND), the size or image count limits, its deadline. (Over gRPC each entry names its
        own model and version, and fails alone.)"""
        return await classify_batch(request, "", query)

    @app.post("/v1/models/{model}:classifyBatch", operation_id="classifyBatchWithModel",
              summary="Classify several images with the named model, one answer per image", **batch)
    async def classify_batch_with_model(request: Request, query: QueryOf, model: str = _MODEL) -> JSONResponse:
        """As classifyBatch, with the named model."""
        return await classify_batch(request, model, query)

    @app.get("/v1/fleet", operation_id="getFleet", response_model=FleetOut, tags=["models"],
             summary="The model servers behind the gateway and what each serves")
    async def fleet() -> JSONResponse:
        return JSONResponse(service.fleet())

    @app.get("/v1/models", operation_id="listModels", response_model=ModelsOut, tags=["models"],
             summary="The models behind the gateway")
    async def list_models() -> JSONResponse:
        models = await service.list_models()
        return JSONResponse({"models": [converters.model_to_json(m) for m in models]})

    @app.get("/v1/examples", operation_id="listExamples", response_model=ExamplesOut, tags=["web page"],
             summary="Example images for the web page")
    async def list_examples() -> JSONResponse:
        return JSONResponse({"examples": example_images(settings.examples_dir)})

    @app.get("/healthz", operation_id="getLiveness", response_model=HealthOut, tags=["probes"],
             summary="Liveness: the process answers")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", operation_id="getReadiness", response_model=ReadinessOut, tags=["probes"],
             responses={503: {"model": ReadinessOut, "description": "not ready: the default model is not "
                                                                   "available, or the gateway is draining"}},
             summary="Readiness: 200 when the default model is available, 503 otherwise (and while draining)")
    async def readyz() -> JSONResponse:
        readiness = service.readiness()
        body = {"ready": readiness.ready, "draining": readiness.draining, "models": readiness.models}
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    @app.get("/metrics", operation_id="getMetrics", response_class=PlainTextResponse, tags=["probes"],
             summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = static_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return PlainTextResponse(PLACEHOLDER_PAGE)

    for prefix, folder in (("/static", static_dir), ("/examples", settings.examples_dir)):
        if folder.is_dir():  # a missing folder means 404s, not errors
            app.mount(prefix, StaticFiles(directory=folder), name=prefix.strip("/"))


def example_images(folder: Path) -> list[dict]:
    """The images under `folder` (none when it does not exist), with their relative URLs."""
    if not folder.is_dir():
        return []
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    return [{"name": path, "url": f"examples/{path}"} for path in paths]


def server_timing(stages: dict[str, float]) -> str:
    """The Server-Timing header: each stage's duration in milliseconds (the web page shows it)."""
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages.items())
