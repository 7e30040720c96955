"""`RestClassifierClient`: the same API over the gateway's REST routes (httpx), for callers that
cannot use gRPC. Blocking and thread-safe; one connection pool for the client's lifetime.

    with RestClassifierClient("http://gateway:8080") as client:
        print(client.classify(Path("shoe.png")).label)

Results and errors are the gRPC clients' (types.py, errors.py). Routes used:

    POST /v1/classify, /v1/models/{model}:classify        multipart `image`; ?top_k=&version=&version_label=
    POST /v1/classify:batch, /v1/models/{model}:classifyBatch   several `image` parts, per-item results
    GET  /v1/models
    GET  /v1/fleet      the models' input sizes, for `shrink=True` (read once per model)

Every call sends its deadline as `x-request-timeout` (seconds) and waits no longer itself: every
connect, send and receive of the call gets at most the time the deadline leaves (_DeadlineBackend),
so a gateway or proxy that answers byte by byte cannot hold a call past it (DeadlineExceeded). The
client connects to the gateway directly (proxy environment variables are not used). A gateway
without the batch route (404/405 without an error reason) gets classify_batch as one call per
image, `concurrency` at a time. Retries as the gRPC clients' (retry.py), classify_batch's failed
images included; in place of gRPC's wait_for_ready, a refused connection is tried again (0.1 s to
1 s apart) until the deadline; with wait_for_ready=False it is an Unavailable, retried by the
policy. An answer that is not the JSON the API describes is a ClassifierError (code UNKNOWN).
After close(), calls raise errors.closed() (code CANCELLED, never retried).
"""

from __future__ import annotations

import contextvars
import dataclasses
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

import httpcore
import httpx

from ._wire import (CallOptions, ShrinkTo, batch_answers, call_options, classification_from_json, in_threads,
                    input_spec, item_result_from_json, load, model_info_from_json, numbered, ordered, readable)
from .channel import PathOrPem, Security, call_metadata
from .errors import ClassifierError, DeadlineExceeded, Unavailable, closed, from_rest_body, parse_retry_after
from .retry import Deadline, Retrier, RetryPolicy
from .types import Classification, Images, ImageSource, ItemResult, ModelInfo

DEADLINE_HEADER = "x-request-timeout"
_RECONNECT_BACKOFF = (0.1, 1.0)  # first and longest wait between refused connections
_T = TypeVar("_T")

# The deadline of the call the current thread is making (httpx's sync client does its I/O in the
# calling thread); read by _DeadlineStream.
_CALL_DEADLINE: contextvars.ContextVar[Optional[Deadline]] = contextvars.ContextVar("imgclass_call_deadline",
                                                                                    default=None)


def _bounded(timeout: Optional[float], timeout_error: type) -> Optional[float]:
    """`timeout` cut to what the current call's deadline leaves; timeout_error when nothing is left."""
    deadline = _CALL_DEADLINE.get()
    left = None if deadline is None else deadline.remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise timeout_error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the current call's deadline:
    httpx's own timeouts apply to each operation, so an answer dripped byte by byte would not end."""

    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: Optional[str] = None,
                  timeout: Optional[float] = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _bounded(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with connections that honour the current call's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, local_address: Optional[str] = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _bounded(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _bounded(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over _DeadlineBackend (httpx exposes no total timeout, only per-operation ones)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._pool._network_backend = _DeadlineBackend(self._pool._network_backend)


class RestClassifierClient:
    """A gateway's REST API. `base_url` is http(s)://host:port (a bare host:port gets http://, or
    https:// with TLS); the other arguments are the gRPC clients' (channel.GrpcClientBase), plus
    `batch_concurrency` for classify_batch without a batch route."""

    def __init__(self, base_url: str = "http://localhost:8080", *, timeout: Optional[float] = 10.0, tls: bool = False,
                 ca: Optional[PathOrPem] = None, cert: Optional[PathOrPem] = None, key: Optional[PathOrPem] = None,
                 api_key: Optional[str] = None, retry: Optional[RetryPolicy] = None, wait_for_ready: bool = True,
                 client_id: Optional[str] = None, canary_key: Optional[str] = None, batch_concurrency: int = 8):
        self._security = Security(tls, ca, cert, key, api_key)
        base = base_url if "://" in base_url else f"{'https' if self._security.uses_tls else 'http'}://{base_url}"
        self.base_url = base.rstrip("/")
        self.timeout = timeout
        self._retrier = Retrier(retry or RetryPolicy())
        self._wait_for_ready = wait_for_ready
        self._headers = dict(call_metadata(self._security, client_id, canary_key))
        self._batch_concurrency = batch_concurrency
        self._batch_route: Optional[bool] = None   # unknown until the first classify_batch
        self._inputs: Dict[str, Any] = {}  # model ("" for the default) -> its imaging.InputSpec, for shrink=True
        self._closed = False
        verify: Any = self._security.ssl_context() if self.base_url.startswith("https://") else True
        transport = _DeadlineTransport(verify=verify, limits=httpx.Limits(max_keepalive_connections=32))
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def classify(self, image: ImageSource, *, model: str = "", top_k: int = 0, version: int = 0,
                 version_label: str = "", timeout: Optional[float] = None,
                 request_id: Optional[str] = None, shrink: bool = False,
                 shrink_to: Optional[ShrinkTo] = None) -> Classification:
        """One image (bytes or a path) -> its Classification; raises ClassifierError.

        `shrink=True` decodes and shrinks the image here with the gateway's own decoder and sends a
        PNG of exactly the model's input size (read from GET /v1/fleet, or given as `shrink_to=
        (height, width, channels)`): the same answer, for a fraction of the bytes and of the
        gateway's CPU. Needs Pillow (`imgclass-client[shrink]`)."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        return self._classify(load(image, options), options, timeout, request_id)

    def _classify(self, image: bytes, options: CallOptions, timeout: Optional[float],
                  request_id: Optional[str] = None) -> Classification:
        path = f"/v1/models/{_quoted(options.model)}:classify" if options.model else "/v1/classify"
        body, rid = self._call("POST", path, self._deadline(timeout), params=options.query(),
                               files=[("image", ("image", image))], request_id=request_id)
        return _read(classification_from_json, body, rid)

    def classify_many(self, images: Images, *, concurrency: int = 8, model: str = "", top_k: int = 0,
                      version: int = 0, version_label: str = "", timeout: Optional[float] = None,
                      shrink: bool = False, shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Many images, `concurrency` calls in flight, each retried on its own; results in input order."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        return self._each(numbered(images), options, timeout, concurrency)

    def classify_batch(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
                       version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
                       shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Images in one call to the batch route, with per-item results in input order. Images that
        failed retryably (Overloaded, Unavailable) are sent again in a smaller batch while the retry
        policy allows, as the gRPC clients do."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        items = list(numbered(images))
        if self._batch_route is False:
            return self._each(items, options, timeout, self._batch_concurrency)
        deadline = self._deadline(timeout)
        results: Dict[int, ItemResult] = {}
        todo = readable(items, results, options)
        path = f"/v1/models/{_quoted(model)}:classifyBatch" if model else "/v1/classify:batch"
        attempt = 0
        while todo:
            attempt += 1
            files = [("image", (f"image-{index}", image)) for index, _, image in todo]
            try:
                body, rid = self._call("POST", path, deadline, params=options.query(), files=files)
            except ClassifierError as exc:
                if self._batch_route is None and exc.http_status in (404, 405) and not exc.reason:
                    self._batch_route = False  # a gateway without the route: one call per image
                    unshrunk = dataclasses.replace(options, shrink_to=None)  # `todo` holds them ready to send
                    return ordered([*results.values(), *self._each(todo, unshrunk, timeout, self._batch_concurrency)])
                raise
            self._batch_route = True
            answers = body.get("responses")
            if not isinstance(answers, list):
                raise ClassifierError("the gateway's batch answer has no list of responses", code="UNKNOWN",
                                      http_status=200, request_id=rid)
            todo, delay = batch_answers(todo, answers, rid, results, self._retrier, attempt, deadline, _item)
            time.sleep(delay)
        return ordered(results.values())

    def _each(self, items: Iterable[Tuple[int, str, ImageSource]], options: CallOptions, timeout: Optional[float],
              concurrency: int) -> List[ItemResult]:
        """One classify call per image, `concurrency` at a time."""
        def one(index: int, id: str, source: ImageSource) -> ItemResult:
            try:
                return ItemResult(index, id, self._classify(load(source, options), options, timeout))
            except ClassifierError as exc:
                return ItemResult(index, id, error=exc)

        return in_threads(one, items, concurrency)

    def _options(self, model: str, top_k: int, version: int, version_label: str, shrink: bool,
                 shrink_to: Optional[ShrinkTo], timeout: Optional[float]) -> CallOptions:
        return call_options(model, top_k, version, version_label, shrink, shrink_to,
                            lambda name: self._input_of(name, timeout))

    def _input_of(self, model: str, timeout: Optional[float]) -> Any:
        """The input size of `model` ("": the default model, the gateway's first) from GET /v1/fleet:
        the version default traffic uses. Read once per model; ValueError when the gateway does not say."""
        if model not in self._inputs:
            try:
                fleet, _ = self._call("GET", "/v1/fleet", self._deadline(timeout))
            except ClassifierError as exc:
                if exc.http_status in (404, 405):
                    raise ValueError("this gateway does not say its models' input size (no GET /v1/fleet): "
                                     "give shrink_to=(height, width, channels)") from None
                raise
            models = fleet.get("models") or {}
            name = model or next(iter(models), "")
            entry = models.get(name) or {}
            versions = entry.get("versions") or []
            chosen = next((v for v in versions if v.get("version") == entry.get("default_version")),
                          versions[0] if versions else {})
            if not chosen.get("input"):
                raise ValueError(f"GET /v1/fleet gives no input size for model {name or '(default)'!r}: "
                                 "give shrink_to=(height, width, channels)")
            self._inputs[model] = input_spec(chosen["input"])
        return self._inputs[model]

    def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        body, _ = self._call("GET", "/v1/models", self._deadline(timeout))
        return _read(lambda b: [model_info_from_json(m) for m in b.get("models", [])], body)

    def close(self) -> None:
        """Closes the connection pool; calls in flight end with errors.closed() (classify_many: in their items)."""
        self._closed = True
        self._http.close()

    def __enter__(self) -> "RestClassifierClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one call, retried ----------------------------------------------------------------------------

    def _deadline(self, timeout: Optional[float]) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def _call(self, method: str, path: str, deadline: Deadline, *, params: Optional[Dict[str, Any]] = None,
              files: Optional[List[Any]] = None, request_id: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
        """The JSON object the gateway answered, and its request id; retried as retry.py says."""
        self._retrier.budget.record_call()
        attempt, refused = 0, 0
        while True:
            if self._closed:
                raise closed()
            left = deadline.timeout()
            headers = dict(self._headers)
            if request_id:
                headers["x-request-id"] = request_id
            if left is not None:
                headers[DEADLINE_HEADER] = f"{left:.3f}"
            token = _CALL_DEADLINE.set(deadline)
            try:
                response = self._http.request(method, path, params=params, files=files, headers=headers,
                                              timeout=left)
            except httpx.ConnectError as exc:
                if self._closed:
                    raise closed() from None
                if not self._wait_for_ready:
                    error: ClassifierError = Unavailable(f"cannot reach the gateway: {exc}", code="UNAVAILABLE")
                else:
                    refused += 1  # nothing reached the gateway: wait for it, as gRPC's wait_for_ready does
                    delay = min(_RECONNECT_BACKOFF[1], _RECONNECT_BACKOFF[0] * 2 ** (refused - 1))
                    remaining = deadline.remaining()
                    if remaining is not None and delay >= remaining:
                        raise DeadlineExceeded(f"the gateway could not be reached before the deadline: {exc}",
                                               code="DEADLINE_EXCEEDED") from None
                    time.sleep(delay)
                    continue
            except httpx.TimeoutException:
                raise DeadlineExceeded("the call's deadline passed", code="DEADLINE_EXCEEDED") from None
            except httpx.TransportError as exc:
                if self._closed:
                    raise closed() from None
                error = Unavailable(f"the connection to the gateway failed: {exc}", code="UNAVAILABLE")
            except httpx.DecodingError as exc:  # e.g. a body that is not the gzip its content-encoding says
                raise ClassifierError(f"the gateway's answer could not be decoded: {exc}", code="UNKNOWN") from None
            except httpx.RequestError as exc:
                raise ClassifierError(f"the call to the gateway failed: {exc}", code="UNKNOWN") from None
            except RuntimeError:  # httpx: the client has been closed (by close(), from another thread)
                if not self._closed:
                    raise
                raise closed() from None
            else:
                rid = response.headers.get("x-request-id", "")
                if response.is_success:
                    return _json_object(response, rid), rid
                error = _http_error(response, rid)
            finally:
                _CALL_DEADLINE.reset(token)
            attempt += 1
            time.sleep(self._retrier.next_delay(error, attempt, deadline))


def _quoted(model: str) -> str:
    """A model name as one path segment of a URL."""
    return urllib.parse.quote(model, safe="")


def _json_object(response: httpx.Response, request_id: str) -> Dict[str, Any]:
    """A successful answer's JSON object; ClassifierError (code UNKNOWN) when it is not one."""
    try:
        body = response.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ClassifierError(f"the gateway's answer was not JSON: {exc}; it began {response.content[:80]!r}",
                              code="UNKNOWN", http_status=response.status_code, request_id=request_id) from None
    if not isinstance(body, dict):
        raise ClassifierError(f"the gateway's answer was not a JSON object but {type(body).__name__}",
                              code="UNKNOWN", http_status=response.status_code, request_id=request_id)
    return body


def _read(convert: Callable[..., _T], *args: Any) -> _T:
    """`convert(*args)` on parts of an answer; ClassifierError (code UNKNOWN) when they are not the API's shape."""
    try:
        return convert(*args)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ClassifierError(f"the gateway's answer is not the shape the API describes: {exc!r}",
                              code="UNKNOWN", http_status=200) from None


def _item(index: int, id: str, answer: Any, request_id: str) -> ItemResult:
    """One entry of a batch answer; an entry not of the API's shape is that image's own error."""
    try:
        return _read(item_result_from_json, index, id, answer, request_id)
    except ClassifierError as exc:
        exc.request_id = request_id
        return ItemResult(index, id, error=exc)


def _http_error(response: httpx.Response, request_id: str) -> ClassifierError:
    try:
        body: Any = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200] or response.reason_phrase}}
    return from_rest_body(body, http_status=response.status_code, request_id=request_id,
                          retry_after=parse_retry_after(response.headers.get("retry-after")))
