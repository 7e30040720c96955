"""REST adapter: TF Serving's HTTP/REST API as an ASGI app (served by uvicorn on the same loop).

Routes and their parsing follow TF Serving's `http_rest_api_handler`:
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    instances / inputs
    GET  <prometheus path>                                       metrics, with --monitoring_config_file
Any other `/v1/...` request is `Malformed request` (400). Errors are `{"error": "..."}` with the
HTTP status TF Serving maps the gRPC code to (`errors.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.parse

import grpc
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response

from serving import rest_json
from serving.configs import MonitoringSettings
from serving.core import SIGNATURE_DEF_FIELD, ServingCore
from serving.errors import ServingError, internal, invalid_argument, unimplemented

log = logging.getLogger(__name__)

_PREDICT = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_API_PREFIX = re.compile(r"(?i)/v1/.*")
_JSON = "application/json"
_CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                 "Access-Control-Allow-Headers": "Content-Type"}


def _model_info(match: re.Match) -> tuple[str, int | None, str | None]:
    name, version, label = match.group(1), match.group(2), match.group(3)
    return (urllib.parse.unquote(name or ""), int(version) if version else None,
            urllib.parse.unquote(label) if label else None)


class RestApi:
    """The ASGI application."""

    def __init__(self, core: ServingCore, monitoring: MonitoringSettings, *, timeout_ms: int, cors: bool):
        self._core = core
        self._monitoring = monitoring
        self._timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self._extra_headers = _CORS_HEADERS if cors else {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        response = await self._respond(Request(scope, receive))
        response.headers.update(self._extra_headers)
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        method = request.method
        if self._monitoring.prometheus_enabled and request.url.path == self._monitoring.prometheus_path:
            return Response(self._core.metrics.render(), media_type="text/plain; version=0.0.4")
        if not _API_PREFIX.fullmatch(path):
            return _error(ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}"))
        if method == "OPTIONS" and self._extra_headers:
            return Response(status_code=204)
        try:
            if method == "POST" and (match := _PREDICT.fullmatch(path)):
                body = await self._predict(*_model_info(match), match.group(4).lower(), await request.body())
            elif method == "GET" and (match := _STATUS.fullmatch(path)):
                body = self._status_or_metadata(*_model_info(match), bool(match.group(4)))
            else:
                raise invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as exc:
            return _error(exc)
        except Exception as exc:  # a bug: logged with its traceback, the client gets a 500
            log.exception("REST %s %s failed", method, path)
            return _error(internal(f"internal error: {type(exc).__name__}"))
        return Response(body, media_type=_JSON)

    async def _predict(self, name: str, version: int | None, label: str | None, method: str, body: bytes) -> bytes:
        with self._core.metrics.track_request(name, method, "REST"):
            if method != "predict":
                raise unimplemented(f"{method} is not implemented by python -m serving, which serves Predict "
                                    f"signatures; POST .../{name}:predict instead")
            doc = rest_json.parse_body(body)
            requested_signature = rest_json.signature_name(doc)
            with self._core.servable(name, version, label) as serving:
                resolved, signature = self._core.signature(serving, requested_signature)
                if signature is None:
                    raise invalid_argument(f'Serving signature name: "{resolved}" not found in signature def')
                inputs, fmt = rest_json.decode_inputs(doc, signature)
                try:
                    outputs = await asyncio.wait_for(self._core.run(serving, signature, inputs, api="predict"),
                                                     self._timeout)
                except TimeoutError:
                    raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            return rest_json.encode_outputs(outputs, fmt)

    def _status_or_metadata(self, name: str, version: int | None, label: str | None, metadata: bool) -> bytes:
        if not name:
            raise invalid_argument("Missing model name in request.")
        if not metadata:
            return json_format.MessageToJson(self._core.status(name, version, label), indent=1,
                                             always_print_fields_with_no_presence=True).encode()
        served_version, signature_defs = self._core.metadata(name, version, label, [SIGNATURE_DEF_FIELD])
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        spec = {"name": name, "signature_name": "", "version": str(served_version)}
        document = {"model_spec": spec,
                    "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_defs, **options)}}
        return json.dumps(document, indent=1).encode()


def _error(exc: ServingError) -> Response:
    return Response(json.dumps({"error": exc.message}), status_code=exc.http_status, media_type=_JSON)
