"""`RestClassifierClient`: the same API over the gateway's REST routes (httpx), for callers that
cannot use gRPC. Blocking and thread-safe; one connection pool for the client's lifetime.

    with RestClassifierClient("http://gateway:8080") as client:
        print(client.classify(Path("shoe.png")).label)

Results and errors are the gRPC clients' (types.py, errors.py). Routes used:

    POST /v1/classify, /v1/models/{model}:classify        multipart `image`; ?top_k=&version=&version_label=
    POST /v1/classify:batch, /v1/models/{model}:classifyBatch   several `image` parts, per-item results
    GET  /v1/models
    GET  /v1/fleet      the models' input sizes, for `shrink=True` (read once per model)

Every call sends its deadline as `x-request-timeout` (seconds) and waits no longer itself. A
gateway without the batch route (404/405 without an error reason) gets classify_batch as one call
per image, `concurrency` at a time. Retries as the gRPC clients' (retry.py); in place of gRPC's
wait_for_ready, a refused connection is tried again (0.1 s to 1 s apart) until the deadline.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import httpx

from ._wire import (CallOptions, ShrinkTo, call_options, classification_from_json, in_threads, input_spec,
                    item_result_from_json, load, model_info_from_json, numbered, ordered, readable)
from .channel import PathOrPem, Security, call_metadata
from .errors import ClassifierError, DeadlineExceeded, Unavailable, from_rest_body, parse_retry_after
from .retry import Deadline, Retrier, RetryPolicy
from .types import Classification, Images, ImageSource, ItemResult, ModelInfo

DEADLINE_HEADER = "x-request-timeout"
_RECONNECT_BACKOFF = (0.1, 1.0)  # first and longest wait between refused connections


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
        verify: Any = self._security.ssl_context() if self.base_url.startswith("https://") else True
        self._http = httpx.Client(base_url=self.base_url, verify=verify, timeout=timeout,
                                  limits=httpx.Limits(max_keepalive_connections=32))

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
        path = f"/v1/models/{options.model}:classify" if options.model else "/v1/classify"
        body, rid = self._call("POST", path, self._deadline(timeout), params=options.query(),
                               files=[("image", ("image", image))], request_id=request_id)
        return classification_from_json(body, rid)

    def classify_many(self, images: Images, *, concurrency: int = 8, model: str = "", top_k: int = 0,
                      version: int = 0, version_label: str = "", timeout: Optional[float] = None,
                      shrink: bool = False, shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Many images, `concurrency` calls in flight, each retried on its own; results in input order."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        return self._each(numbered(images), options, timeout, concurrency)

    def classify_batch(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
                       version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
                       shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Images in one call to the batch route, with per-item results in input order."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        items = list(numbered(images))
        if self._batch_route is False:
            return self._each(items, options, timeout, self._batch_concurrency)
        results: Dict[int, ItemResult] = {}
        todo = readable(items, results, options)
        if not todo:
            return ordered(results.values())
        path = f"/v1/models/{model}:classifyBatch" if model else "/v1/classify:batch"
        files = [("image", (f"image-{index}", image)) for index, _, image in todo]
        try:
            body, rid = self._call("POST", path, self._deadline(timeout), params=options.query(), files=files)
        except ClassifierError as exc:
            if exc.http_status in (404, 405) and not exc.reason:  # a gateway without the route
                self._batch_route = False
                return self._each(items, options, timeout, self._batch_concurrency)
            raise
        self._batch_route = True
        answers = body.get("responses", [])
        if len(answers) != len(todo):
            raise ClassifierError(f"the gateway answered {len(answers)} of {len(todo)} images", code="INTERNAL",
                                  request_id=rid)
        for (index, id, _), answer in zip(todo, answers):
            results[index] = item_result_from_json(index, id, answer, rid)
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
        return [model_info_from_json(m) for m in body.get("models", [])]

    def close(self) -> None:
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
        self._retrier.budget.record_call()
        attempt, refused = 0, 0
        while True:
            left = deadline.timeout()
            headers = dict(self._headers)
            if request_id:
                headers["x-request-id"] = request_id
            if left is not None:
                headers[DEADLINE_HEADER] = f"{left:.3f}"
            try:
                response = self._http.request(method, path, params=params, files=files, headers=headers,
                                              timeout=left)
            except httpx.ConnectError as exc:
                if not self._wait_for_ready:
                    raise Unavailable(f"cannot reach the gateway: {exc}", code="UNAVAILABLE") from None
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
                error: ClassifierError = Unavailable(f"the connection to the gateway failed: {exc}",
                                                     code="UNAVAILABLE")
            else:
                rid = response.headers.get("x-request-id", "")
                if response.is_success:
                    return response.json(), rid
                error = _http_error(response, rid)
            attempt += 1
            time.sleep(self._retrier.next_delay(error, attempt, deadline))


def _http_error(response: httpx.Response, request_id: str) -> ClassifierError:
    try:
        body: Any = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200] or response.reason_phrase}}
    return from_rest_body(body, http_status=response.status_code, request_id=request_id,
                          retry_after=parse_retry_after(response.headers.get("retry-after")))
