"""REST, documented: the finished OpenAPI document at /openapi.json and Swagger UI at /docs.

FastAPI generates the document from the routes; `install_openapi` finishes it once: FastAPI's
automatic 422 answers and their schemas go (invalid parameters are answered 400 with the error
body), every response declares `x-request-id`, error answers to be retried declare `retry-after`,
401s `www-authenticate`; every operation takes `x-request-id` and may answer 500; the API key
scheme is declared, and each operation the gateway's keys protect requires it (and may answer 401).

Swagger UI's files come from the `swagger-ui-bundle-v2` package and are served by the gateway
itself (/docs/assets/...), so /docs works on a network without internet access; its online
validator badge is off for the same reason.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from gateway.auth import ApiKeyAuth
from gateway.errors import Unauthenticated
from gateway.rest_middleware import NoRoute
from gateway.rest_schemas import ERROR_DESCRIPTIONS, HEADERS, PARAMETERS, SECURITY_SCHEMES, ErrorOut, ref

DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon-32x32.png": "image/png"}
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def install_openapi(app: FastAPI, auth: ApiKeyAuth) -> None:
    """Serve the finished document at app.openapi_url, generated once, on first use."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = finish(generate(), auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  (FastAPI's documented way to change the document)


def finish(spec: dict, auth: ApiKeyAuth) -> dict:
    """The changes listed in the module docstring, made in place; returns `spec`."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    components["headers"] = HEADERS
    components["parameters"] = PARAMETERS
    components["securitySchemes"] = SECURITY_SCHEMES
    if auth.enabled:
        spec["security"] = [{"bearerAuth": []}]
    error_body = {"application/json": {"schema": ref("schemas", ErrorOut.__name__)}}
    for path, operations in spec.get("paths", {}).items():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            operation["parameters"] = [ref("parameters", "RequestId"), *operation.get("parameters", [])]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            extra = [500]
            if _needs_key(auth, path):
                extra.append(401)
            elif auth.enabled:
                operation["security"] = []  # open without a key (public_health_and_metrics)
            for status in extra:
                responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status], "content": error_body})
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers["x-request-id"] = ref("headers", "RequestId")
                if status in ("429", "503") and response.get("content") == error_body:
                    headers["retry-after"] = ref("headers", "RetryAfter")
                if status == "401":
                    headers["www-authenticate"] = ref("headers", "WwwAuthenticate")
    return spec


def _needs_key(auth: ApiKeyAuth, path: str) -> bool:
    """Whether the gateway refuses a request to `path` that carries no API key."""
    try:
        auth.authorize(path, None)
    except Unauthenticated:
        return True
    return False


def add_docs(app: FastAPI) -> None:
    """GET /docs (Swagger UI) and the files it loads, all from this gateway."""
    title = f"{app.title} - API docs"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=title,
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = DOCS_ASSETS.get(name)
        if media_type is None:
            raise NoRoute(404, f"no such file: /docs/assets/{name}")
        return FileResponse(Path(str(swagger_ui_path / name)), media_type=media_type,
                            headers={"cache-control": "public, max-age=86400"})
