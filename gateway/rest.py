"""The REST transport (README, "API"): a FastAPI app over the core, with the web page, /metrics and /docs.

`create_app` puts together what the other rest_* modules hold, one job each:

    rest_routes.py      the routes: read the request, call the core, answer with the converters' JSON
    rest_requests.py    reading a request: deadline header, body within limits, image(s), a client leaving
    rest_middleware.py  around every route: request record, API key check, 500s; THE error body builder
    rest_schemas.py     the response models and OpenAPI pieces behind /openapi.json
    rest_openapi.py     the finished /openapi.json, and Swagger UI at /docs from a package (no CDN)

Every response carries `x-request-id`; every error body is
`{"error": {"code", "reason", "message", "request_id"[, "retry_after"][, "metadata"]}}`
(gateway/errors.py), with `retry-after` when a retry can cure it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from gateway.auth import ApiKeyAuth
from gateway.core import GatewayCore
from gateway.metrics import Metrics
from gateway.rest_middleware import RequestMiddleware, install_error_handlers, quiet_probes
from gateway.rest_openapi import add_docs, install_openapi
from gateway.rest_routes import add_routes
from gateway.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
DESCRIPTION = (
    "Classify images with the models behind this gateway. The same API is served over gRPC as "
    "`classifier.v1.Classifier` (protos/classifier/v1/classifier.proto). Every response carries "
    "`x-request-id` (send one to choose it). Errors are `{\"error\": {\"code\", \"reason\", \"message\", "
    "\"request_id\"}}`, plus `retry_after` (and a `retry-after` header) when a retry can succeed and "
    "`metadata` where it helps; programs branch on `reason`, never on the message.")


def create_app(settings: Settings, service: GatewayCore, metrics: Metrics,
               auth: ApiKeyAuth | None = None, static_dir: Path = STATIC_DIR) -> FastAPI:
    auth = auth if auth is not None else ApiKeyAuth(())
    app = FastAPI(title="Image classifier gateway", description=DESCRIPTION, version="1",
                  openapi_url="/openapi.json", docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.add_middleware(RequestMiddleware, metrics=metrics, auth=auth)
    install_error_handlers(app)
    add_routes(app, settings, service, metrics, static_dir)
    add_docs(app)
    install_openapi(app, auth)
    quiet_probes()
    return app
