"""REST adapter: TF Serving's HTTP/REST API as an ASGI app (served by uvicorn on the same loop).

Routes and their parsing follow TF Serving's `http_rest_api_handler` and `http_server`:
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]                 model status (a label is
                                                                      ignored: every version)
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata        signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict          instances / inputs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify|regress tf.Example "examples"
    OPTIONS /v1/...                                                   CORS preflight: 200 when the
                                                                      request has an http(s) Origin
    GET  <prometheus path>                                            metrics, with --monitoring_config_file
Paths match case-insensitively but the verb after `:` must be lower case, as in TF Serving; any
other `/v1/...` request is `Malformed request` (400), a version that does not fit in int64 is
`Failed to convert version` (400). A `Content-Encoding: gzip` body is inflated (up to 100 MB).
Errors are `{"error": "..."}` with the HTTP status TF Serving maps the gRPC code to (`errors.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.parse
import zlib

import grpc
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving import rest_json
from serving.configs import MonitoringSettings
from serving.core import SIGNATURE_DEF_FIELD, ServingCore
from serving.errors import ServingError, failed_precondition, internal, invalid_argument

log = logging.getLogger(__name__)

_PREDICT = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_API_PREFIX = re.compile(r"(?i)/v1/.*")
_ORIGIN = re.compile(r"https?://")
_JSON = "application/json"
_CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                 "Access-Control-Allow-Headers": "Content-Type"}
MAX_INFLATED_BYTES = 100 * 1024 * 1024  # TF Serving's limit for a gzip request body
_INT64_MAX = 2**63 - 1


def _model_info(match: re.Match) -> tuple[str, int | None, str | None]:
    """Name, version and label of a matched path: percent-decoded, the version as int64."""
    name, version, label = match.group(1), match.group(2), match.group(3)
    if version and int(version) > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return (urllib.parse.unquote(name or ""), int(version) if version else None,
            urllib.parse.unquote(label) if label else None)


def inflate(body: bytes) -> bytes:
    """A gzip body inflated; empty (so `The document is empty`) when it cannot be, as in TF Serving."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        log.warning("REST request body is not valid gzip: %s", exc)
        return b""
    if inflater.unconsumed_tail or not inflater.eof:
        log.warning("REST gzip request body is truncated or inflates to more than %d bytes", MAX_INFLATED_BYTES)
        return b""
    return data


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
        try:
            if method == "OPTIONS":
                if not _ORIGIN.search(request.headers.get("origin", "")):
                    raise failed_precondition("Origin header is missing in CORS preflight")
                return Response(status_code=200)
            body = await self._dispatch(method, path, request)
        except ServingError as exc:
            return _error(exc)
        except Exception as exc:  # a bug: logged with its traceback, the client gets a 500
            log.exception("REST %s %s failed", method, path)
            return _error(internal(f"internal error: {type(exc).__name__}"))
        return Response(body, media_type=_JSON)

    async def _dispatch(self, method: str, path: str, request: Request) -> bytes:
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            name, version, label = _model_info(match)
            verb = match.group(4)
            if verb in ("predict", "classify", "regress"):  # `:PREDICT` matches the path but is no verb
                body = await request.body()
                if "gzip" in request.headers.get("content-encoding", ""):
                    body = inflate(body)
                with self._core.metrics.track_request(name, verb, "REST"):
                    if verb == "predict":
                        return await self._deadline(self._predict(name, version, label, body))
                    return await self._deadline(self._classify_or_regress(name, version, label, verb, body))
        elif method == "GET" and (match := _STATUS.fullmatch(path)):
            name, version, label = _model_info(match)
            if not name:
                raise invalid_argument("Missing model name in request.")
            if match.group(4) == "metadata":
                return self._metadata(name, version, label)
            return json_format.MessageToJson(self._core.status(name, version), indent=1,
                                             always_print_fields_with_no_presence=True).encode()
        raise invalid_argument(f"Malformed request: {method} {path}")

    async def _deadline(self, work) -> bytes:
        try:
            return await asyncio.wait_for(work, self._timeout)
        except TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    async def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        doc = rest_json.parse_body(body)
        requested_signature = rest_json.signature_name(doc)
        with self._core.servable(name, version, label) as serving:
            resolved, signature = self._core.signature(serving, requested_signature)
            if signature is None:
                raise invalid_argument(f'Serving signature name: "{resolved}" not found in signature def')
            inputs, fmt = rest_json.decode_inputs(doc, signature, requested_signature)
            outputs = await self._core.run(serving, signature, inputs, api="Predict")
        return rest_json.encode_outputs(outputs, fmt)

    async def _classify_or_regress(self, name: str, version: int | None, label: str | None, verb: str,
                                   body: bytes) -> bytes:
        request = (classification_pb2.ClassificationRequest() if verb == "classify"
                   else regression_pb2.RegressionRequest())
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        doc = rest_json.parse_body(body)
        request.model_spec.signature_name = rest_json.signature_name(doc)
        rest_json.fill_examples(doc, request.input)
        if verb == "classify":
            return rest_json.encode_classification((await self._core.classify(request)).result)
        return rest_json.encode_regression((await self._core.regress(request)).result)

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        served_version, signature_defs = self._core.metadata(name, version, label, [SIGNATURE_DEF_FIELD])
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        spec = {"name": name, "signature_name": "", "version": str(served_version)}
        document = {"model_spec": spec,
                    "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_defs, **options)}}
        return json.dumps(document, indent=1).encode()


def _error(exc: ServingError) -> Response:
    return Response(json.dumps({"error": exc.message}), status_code=exc.http_status, media_type=_JSON)
