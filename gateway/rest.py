"""The REST transport (CONTRACT §5): FastAPI routes over the core, plus the web page and metrics.

Thin, like the gRPC servicer: read the request, call the core, convert the result (converters),
map errors through the same table (errors.TABLE). Request bodies are read with the size limit
enforced while reading - a 1 GB upload is refused after `max_body_bytes`, not after arriving.
Every response carries `x-request-id`; error bodies are `{"error": {"code", "message",
"request_id"}}`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import converters
from gateway.core import ClassifierService, ClassifyInput
from gateway.errors import TABLE, ErrorKind, GatewayError, InternalError, InvalidArgument, TooLarge
from gateway.logs import REQUEST_ID_HEADER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PLACEHOLDER_PAGE = ("The web page is not installed (gateway/static/index.html is missing).\n"
                    "The API works: POST an image to /v1/classify; see /docs.\n")
RAW_BODY_TYPES = ("image/", "application/octet-stream")
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


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

_TOP_K = Query(0, description="how many predictions to return; 0 means the configured default")


# -- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings, service: ClassifierService, metrics: Metrics,
               static_dir: Path = STATIC_DIR) -> FastAPI:
    app = FastAPI(
        title="Image classifier gateway",
        description="Classify images with the models behind this gateway. The same API is served over "
                    "gRPC as `classifier.v1.Classifier`. Errors are `{\"error\": {\"code\", \"message\", "
                    "\"request_id\"}}`; send `x-request-id` to choose the id.",
        version="1", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None,
    )
    app.add_middleware(RequestRecordMiddleware, metrics=metrics)
    _add_error_handlers(app)

    async def classify(request: Request, model: str, top_k: int) -> JSONResponse:
        record: RequestRecord = request.state.record
        name = service.resolve_model(model)
        record.model = name
        body = await read_body(request, settings.max_body_bytes)
        image = await image_from_body(request, body, settings.max_body_bytes)
        record.images = 1
        result = await service.classify(ClassifyInput(name, image, top_k), service.deadline(None))
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body ({declared} bytes) is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        retry = {"retry-after": "1"} if exc.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE) else None
        return _error_response(request, exc.http_status, exc.code_name, exc.message, retry)

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
