"""REST, around every route: the request record, the API key check, and the one error body builder.

`RequestMiddleware` (pure ASGI) gives every HTTP request its record (gateway/logs.py): the request
id (the client's `x-request-id`, or a new one), the caller (gateway/callers.py) and the canary
route key (gateway/routing.py). It refuses requests without a valid API key when keys are
configured (gateway/auth.py), adds `x-request-id` to every response, and ends each request with
one metrics sample and one log line - at debug level for the probes (`/healthz`, `/readyz`,
`/metrics`: a poll every few seconds is not news; `gateway_requests_total` still counts them).
An unexpected exception anywhere below it is logged once, with the request id and traceback, and
answered here as a 500 INTERNAL error body that carries the id too; it does not reach the server
(uvicorn would log it a second time) - unless the answer has started already: then no error body
can follow, and it is re-raised so that the server breaks the connection off (and logs it again);
the client sees a truncated answer, the request is counted and logged as a 500.

`error_response` is the only place a REST error answer is made, for the routes' GatewayErrors,
the middleware's refusals and 500s, and the framework's own errors (`install_error_handlers`):
the body is `GatewayError.to_body` (gateway/errors.py), with a `retry-after` header for an error
a retry can cure and `www-authenticate` on 401.
"""

from __future__ import annotations

import logging
from typing import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import AUTHORIZATION, CHALLENGE, ApiKeyAuth
from gateway.callers import CLIENT_ID_HEADER, identify
from gateway.errors import (ErrorKind, GatewayError, InternalError, InvalidArgument, TooLarge,
                            Unauthenticated)
from gateway.logs import REQUEST_ID_HEADER, REQUEST_LOGGER, RequestRecord, finish_request, request_id
from gateway.metrics import Metrics
from gateway.routing import CANARY_KEY_HEADER, route_key

log = logging.getLogger(__name__)

PROBE_ROUTES = frozenset({"GET /healthz", "GET /readyz", "GET /metrics"})
_SHOWN_PATH_CHARS = 100  # of a path without a route, in its error message


class NoRoute(GatewayError):
    """A 404 or 405 from routing: the API has no such path, or no such method on it.

    Its body has no `reason`, as a gRPC UNIMPLEMENTED carries no ErrorInfo: the request never
    reached the API, and a client may take it for an older gateway without that route.
    """

    kind = ErrorKind.INVALID_ARGUMENT  # never retryable; status and code are its own

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def code_name(self) -> str:
        return "NOT_FOUND" if self.status == 404 else "UNIMPLEMENTED"

    def to_body(self, request_id: str) -> dict:
        body = super().to_body(request_id)
        del body["error"]["reason"]
        return body


def error_response(err: GatewayError, request_id: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """THE REST error answer: the error's status and body, and the headers that go with it
    (plus `headers`, such as the `allow` of a 405)."""
    headers = dict(headers or {})
    retry_after = err.retry_after_header()
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if err.kind is ErrorKind.UNAUTHENTICATED:
        headers["www-authenticate"] = CHALLENGE
    return JSONResponse(err.to_body(request_id), status_code=err.http_status, headers=headers)


def framework_error(request: Request, status: int, detail: str) -> GatewayError:
    """The GatewayError for an error Starlette or FastAPI raised itself, by its HTTP status: 400
    and 413 as they are, 405 for a method a route lacks, else (no route, no file, an unreadable
    file) a 404."""
    if status == 400:
        return InvalidArgument(detail)
    if status == 413:
        return TooLarge(detail)
    path = request.url.path[:_SHOWN_PATH_CHARS]
    if status == 405:
        return NoRoute(405, f"{request.method} is not allowed on {path}")
    return NoRoute(404, f"nothing at {request.method} {path} (the API is described at /docs)")


def _record(request: Request) -> RequestRecord:
    return request.scope["state"]["record"]


def install_error_handlers(app: FastAPI) -> None:
    """Answer GatewayErrors, invalid parameters and the framework's own errors with error_response."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc, _record(request).request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(InvalidArgument(problems), _record(request).request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(framework_error(request, exc.status_code, str(exc.detail)), _record(request).request_id,
                              exc.headers)


class RequestMiddleware:
    """Pure ASGI, outermost of the app's own middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, metrics: Metrics, auth: ApiKeyAuth):
        self.app = app
        self.metrics = metrics
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get(AUTHORIZATION)
        client = scope.get("client")
        record = RequestRecord(
            request_id(headers.get(REQUEST_ID_HEADER)), "http", scope["path"],
            route_key=route_key(headers.get(CANARY_KEY_HEADER), authorization),
            caller=identify(self.auth.caller(authorization), headers.get(CLIENT_ID_HEADER),
                            client[0] if client else None))
        scope.setdefault("state", {})["record"] = record
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.encode(), record.request_id.encode())]
            await send(message)

        refusal = self._refusal(scope["path"], authorization)
        self.metrics.inflight_of("http").inc()
        try:
            if refusal is not None:
                await error_response(refusal, record.request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("unexpected error", exc_info=exc,
                      extra={"fields": {"request_id": record.request_id, "path": scope["path"]}})
            if started:  # half an answer is out: only the server can break the connection off
                status = 500
                raise
            await error_response(InternalError(), record.request_id)(scope, receive, send_with_id)
        finally:
            self.metrics.inflight_of("http").dec()
            # The route template (bounded label values); a mount (static files) by its prefix.
            template = getattr(scope.get("route"), "path", None) or scope.get("root_path") or "unmatched"
            record.route = f"{scope['method']} {template}"
            record.status = str(status)
            finish_request(record, self.metrics)

    def _refusal(self, path: str, authorization: str | None) -> Unauthenticated | None:
        """Why the request may not be served (no valid API key), or None."""
        try:
            self.auth.authorize(path, authorization)
        except Unauthenticated as err:
            return err
        return None


class QuietProbes(logging.Filter):
    """On the request logger: the probes' request lines at debug level, not info (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None) or {}
        if fields.get("transport") != "http" or fields.get("route") not in PROBE_ROUTES:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


QUIET_PROBES = QuietProbes()


def quiet_probes() -> None:
    """Install QuietProbes on the request logger (once, however many apps are made)."""
    logging.getLogger(REQUEST_LOGGER).addFilter(QUIET_PROBES)
