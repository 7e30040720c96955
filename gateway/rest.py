"""The REST transport (README, "API"): FastAPI routes over the core, plus the web page and metrics.

Thin, like the gRPC servicer: read the request, call the core, convert the result (converters),
map errors through the same table (errors.TABLE). Request bodies are read with the size limit
enforced while reading - a 1 GB upload is refused after `max_body_bytes`, not after arriving - and
within the request's deadline (a client trickling its body gets 504, not a connection held
forever). A client that hangs up has its classification cancelled, the model server call included,
as a gRPC client's cancellation does. Every response carries `x-request-id`; error bodies are
`{"error": {"code", "message", "request_id"}}`. With API keys configured, `ApiKeyMiddleware` runs
the one check (auth.py) before any route.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, TypeVar

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import converters
from gateway.auth import AUTHORIZATION, CHALLENGE, ApiKeyAuth
from gateway.core import ClassifierService, ClassifyInput
from gateway.errors import (TABLE, ClientGone, DeadlineExceeded, ErrorKind, GatewayError, InternalError,
                            InvalidArgument, TooLarge)
from gateway.logs import REQUEST_ID_HEADER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.routing import CANARY_KEY_HEADER, route_key
from gateway.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PLACEHOLDER_PAGE = ("The web page is not installed (gateway/static/index.html is missing).\n"
                    "The API works: POST an image to /v1/classify; see /docs.\n")
RAW_BODY_TYPES = ("image/", "application/octet-stream")
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
INT32_MAX = 2**31 - 1  # top_k is an int32 on the gRPC side; the same range here
INT64_MAX = 2**63 - 1  # versions are int64
T = TypeVar("T")


# -- response schemas, for /docs (handlers return the converters' JSON directly) -----------------

class PredictionOut(BaseModel):
    label: str
    score: float = Field(ge=0.0, le=1.0)


class ClassifyOut(BaseModel):
    """The JSON of classifier.v1.ClassifyResponse."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model": "fashion", "model_version": 1, "label": "Ankle boot", "confident": True,
        "predictions": [{"label": "Ankle boot", "score": 0.97}, {"label": "Sneaker", "score": 0.02}],
    }, {
        "model": "fashion", "model_version": 1, "label": "not sure", "confident": False,
        "predictions": [{"label": "Shirt", "score": 0.48}, {"label": "T-shirt/top", "score": 0.41}],
    }]})

    model: str
    model_version: int
    label: str = Field(description="the top label when the thresholds pass, else the uncertain label")
    confident: bool
    predictions: list[PredictionOut] = Field(description="top-k, highest score first")


class ModelOut(BaseModel):
    name: str
    version: int
    labels: list[str]
    state: str = Field(description="AVAILABLE, LOADING, ... as the model server reports it")


class FleetOut(BaseModel):
    """The model servers behind the gateway and what each serves, with every model's routing."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "backend": "dns:///model-server:8500", "balancing": "endpoints", "healthy_endpoints": 2,
        "endpoints": [{"address": "10.0.0.7:8500", "state": "healthy", "reason": None, "inflight": 1, "checked": True,
                       "models": {"fashion": [{"version": 1, "state": "AVAILABLE", "usable": True}]}}],
        "models": {"fashion": {"state": "AVAILABLE", "problem": None, "default_version": 1, "mode": "common",
                               "labels": {"stable": 1}, "canary": None, "shadow": None,
                               "versions": [{"version": 1, "endpoints": 2, "labels": ["stable"],
                                             "input": "28x28x1", "classes": 10}]}}}]})

    backend: str
    balancing: str = Field(description="endpoints (a channel per model server) or channel (one round_robin channel)")
    healthy_endpoints: int
    endpoints: list[dict[str, Any]] = Field(description="address, state (healthy|ejected), reason, inflight, checked, "
                                                         "models: {model: [{version, state, usable}]}")
    models: dict[str, dict[str, Any]] = Field(description="per model: state, problem, default_version, mode "
                                                          "(pinned|common|per_endpoint|none), labels, canary, "
                                                          "shadow, versions: [{version, endpoints, labels, input, classes}]")


class ModelsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"models": [{
        "name": "fashion", "version": 1, "state": "AVAILABLE",
        "labels": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]}]}]})

    models: list[ModelOut]


class ExampleOut(BaseModel):
    name: str = Field(description="path under the examples folder")
    url: str = Field(description="where to GET it, relative to the gateway's root")


class ExamplesOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"examples": [
        {"name": "fashion/ankle-boot.png", "url": "examples/fashion/ankle-boot.png"}]}]})

    examples: list[ExampleOut]


class ErrorDetail(BaseModel):
    code: str = Field(description="gRPC status name, e.g. INVALID_ARGUMENT")
    message: str
    request_id: str


class ErrorOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "code": "INVALID_ARGUMENT", "message": "not an image, or not one of the accepted formats (JPEG, PNG, WEBP)",
        "request_id": "3f2c9e0a5b7d4e1f8a6b2c4d0e9f1a7b"}}]})

    error: ErrorDetail


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "not an image, unsupported format, bad parameter"},
    401: {"model": ErrorOut, "description": "missing or wrong API key (when the gateway requires one)"},
    404: {"model": ErrorOut, "description": "unknown model"},
    413: {"model": ErrorOut, "description": "body over the limit"},
    429: {"model": ErrorOut, "description": "overloaded: the queue is full"},
    503: {"model": ErrorOut, "description": "model server down or model not loaded"},
    504: {"model": ErrorOut, "description": "deadline exceeded"},
}

_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/webp": {"schema": {"type": "string", "format": "binary"}},
}}}

_TOP_K = Query(0, ge=0, le=INT32_MAX, description="how many predictions to return; 0 means the configured default")


# -- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings, service: ClassifierService, metrics: Metrics,
               auth: ApiKeyAuth | None = None, static_dir: Path = STATIC_DIR) -> FastAPI:
    app = FastAPI(
        title="Image classifier gateway",
        description="Classify images with the models behind this gateway. The same API is served over "
                    "gRPC as `classifier.v1.Classifier`. Errors are `{\"error\": {\"code\", \"message\", "
                    "\"request_id\"}}`; send `x-request-id` to choose the id.",
        version="1", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None,
    )
    if auth is not None and auth.enabled:
        app.add_middleware(ApiKeyMiddleware, auth=auth)   # inside the record: refusals get an id and a log line
    app.add_middleware(RequestRecordMiddleware, metrics=metrics)
    _add_error_handlers(app)

    async def classify(request: Request, model: str, top_k: int, version: int = 0, label: str = "") -> JSONResponse:
        record: RequestRecord = request.state.record
        name = service.resolve_model(model)
        record.model = name
        deadline = service.deadline(None)
        body = await read_body(request, settings.max_body_bytes, deadline)
        image = await image_from_body(request, body, settings.max_body_bytes)
        record.images = 1
        key = route_key(request.headers.get(CANARY_KEY_HEADER), request.headers.get(AUTHORIZATION))
        work = service.classify(ClassifyInput(name, image, top_k, version, label, key), deadline)
        result = await unless_client_leaves(request, work)
        record.version = result.version
        record.add_stages(result.stages)
        return JSONResponse(converters.classification_to_json(result),
                            headers={"server-timing": server_timing(result.stages)})

    @app.post("/v1/classify", response_model=ClassifyOut, responses=_ERROR_RESPONSES,
              openapi_extra=_IMAGE_BODY, summary="Classify an image with the default model")
    async def classify_default(request: Request, top_k: int = _TOP_K) -> JSONResponse:
        """Body: multipart field `image`, or the raw image with an `image/*` content type."""
        return await classify(request, "", top_k)

    @app.post("/v1/models/{model}:classify", response_model=ClassifyOut, responses=_ERROR_RESPONSES,
              openapi_extra=_IMAGE_BODY, summary="Classify an image with the named model")
    async def classify_with_model(request: Request, model: str, top_k: int = _TOP_K) -> JSONResponse:
        """Body: multipart field `image`, or the raw image with an `image/*` content type."""
        return await classify(request, model, top_k)

    @app.post("/v1/models/{model}/versions/{version}:classify", response_model=ClassifyOut,
              responses=_ERROR_RESPONSES, openapi_extra=_IMAGE_BODY,
              summary="Classify an image with one version of the named model")
    async def classify_with_version(request: Request, model: str,
                                    version: int = PathParam(ge=1, le=INT64_MAX, description="the model version"),
                                    top_k: int = _TOP_K) -> JSONResponse:
        """404 when no model server serves that version (the message names the versions served)."""
        return await classify(request, model, top_k, version=version)

    @app.post("/v1/models/{model}/labels/{label}:classify", response_model=ClassifyOut,
              responses=_ERROR_RESPONSES, openapi_extra=_IMAGE_BODY,
              summary="Classify an image with the version a label of the named model points at")
    async def classify_with_label(request: Request, model: str,
                                  label: str = PathParam(description="a label defined in the gateway's settings"),
                                  top_k: int = _TOP_K) -> JSONResponse:
        """404 for a label the model's settings do not define (the message names the labels)."""
        return await classify(request, model, top_k, label=label)

    @app.get("/v1/fleet", response_model=FleetOut, summary="The model servers behind the gateway and "
                                                            "what each serves")
    async def fleet() -> JSONResponse:
        return JSONResponse(service.fleet())

    @app.get("/v1/models", response_model=ModelsOut, summary="The models behind the gateway")
    async def list_models() -> JSONResponse:
        models = await service.list_models()
        return JSONResponse({"models": [converters.model_to_json(m) for m in models]})

    @app.get("/v1/examples", response_model=ExamplesOut, summary="Example images for the web page")
    async def list_examples() -> JSONResponse:
        return JSONResponse({"examples": example_images(settings.examples_dir)})

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 when the default model is available, 503 otherwise "
                                "(and while draining)")
    async def readyz() -> JSONResponse:
        readiness = service.readiness()
        body = {"ready": readiness.ready, "draining": readiness.draining, "models": readiness.models}
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
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
    return app


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


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes, and with
    504 when it has not all arrived by `deadline` (an event-loop time)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body ({declared} bytes) is over the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise DeadlineExceeded(f"the request body was not received before the deadline ({size} bytes arrived)") from None
    except ClientDisconnect:
        raise ClientGone("the client closed the connection while sending the body") from None
    return b"".join(chunks)


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (after the body has been read), cancelling it if the client hangs up first:
    nobody would read the answer, so its place in a batch and its model server call are freed."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client closed the connection before the answer was ready")
    finally:
        task.cancel()
        left.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the server reports the client gone (ASGI: after the body, receive() waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def image_from_body(request: Request, body: bytes, limit: int) -> bytes:
    """The image bytes: the multipart field `image`, or the whole body for image/* content."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=limit)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise InvalidArgument("the multipart body has no file field named `image`")
            return await upload.read()
        finally:
            await form.close()
    if media_type.startswith(RAW_BODY_TYPES):
        return body
    raise InvalidArgument("send the image as the multipart/form-data field `image`, or as the raw body "
                          f"with an image/* content type (got {media_type or 'no content type'!r})")


# -- errors and the per-request record ------------------------------------------------------------

def _http_error_code(status: int) -> str:
    """gRPC-style code name for a status Starlette produced itself (unknown route, bad form...)."""
    for grpc_code, http_status in TABLE.values():
        if http_status == status:
            return grpc_code.name
    return {405: "UNIMPLEMENTED"}.get(status, "UNKNOWN")


def _error_response(request: Request, status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    record: RequestRecord | None = getattr(request.state, "record", None)
    rid = record.request_id if record else ""
    body = {"error": {"code": code, "message": message, "request_id": rid}}
    return JSONResponse(body, status_code=status, headers=headers)


def _gateway_error_response(err: GatewayError, rid: str) -> JSONResponse:
    """The answer to a GatewayError: its status from the table, and the headers that go with it."""
    headers = {}
    if err.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE):
        headers["retry-after"] = "1"
    if err.kind is ErrorKind.UNAUTHENTICATED:
        headers["www-authenticate"] = CHALLENGE
    return JSONResponse(err.to_body(rid), status_code=err.http_status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        record: RequestRecord | None = getattr(request.state, "record", None)
        return _gateway_error_response(exc, record.request_id if record else "")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error_response(request, 400, "INVALID_ARGUMENT", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(request, exc.status_code, _http_error_code(exc.status_code), str(exc.detail),
                               dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        record = getattr(request.state, "record", None)
        log.error("unexpected error", exc_info=exc,
                  extra={"fields": {"request_id": record.request_id if record else None}})
        err = InternalError()
        return _error_response(request, err.http_status, err.code_name, err.message)


class ApiKeyMiddleware:
    """Pure ASGI: refuses requests without a valid API key (auth.py decides) before any route runs."""

    def __init__(self, app: ASGIApp, auth: ApiKeyAuth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.auth.authorize(scope["path"], Headers(scope=scope).get(AUTHORIZATION))
            except GatewayError as err:
                record: RequestRecord = scope["state"]["record"]
                await _gateway_error_response(err, record.request_id)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestRecordMiddleware:
    """Pure ASGI: request id in and out, in-flight gauge, one metrics sample and log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.encode())
        record = RequestRecord(request_id(given.decode("latin-1") if given else None), "http", scope["path"])
        scope.setdefault("state", {})["record"] = record
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), record.request_id.encode())]
            await send(message)

        self.metrics.inflight.labels("http").inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.inflight.labels("http").dec()
            # The route template (bounded label values); a mount (static files) by its prefix.
            template = getattr(scope.get("route"), "path", None) or scope.get("root_path") or "unmatched"
            record.route = f"{scope['method']} {template}"
            record.status = str(status)
            finish_request(record, self.metrics)
