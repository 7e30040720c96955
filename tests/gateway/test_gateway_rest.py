"""The gateway's REST transport over the wire: batch route, deadline header, error bodies and their
headers, caller identity, quiet probes, and the OpenAPI document (checked against real answers).

The session's gateway and model server (tests/conftest.py) answer most tests; two small gateways of
this module's own show 429 (a decode bound of one) and 503 (no model server, API keys on). The
middleware's answer to an unexpected exception is tested in-process with a trivial app that raises:
nothing in the real gateway fails that way on purpose.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math

import httpx
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from gateway.auth import ApiKeyAuth
from gateway.metrics import Metrics
from gateway.rest_middleware import RequestMiddleware
from helpers import assert_same_answers, free_port, metric
from tools import stack
from helpers import wait_until

OPERATION_IDS = {"classify", "classifyWithModel", "classifyWithVersion", "classifyWithLabel", "classifyBatch",
                 "classifyBatchWithModel", "getFleet", "listModels", "listExamples", "getLiveness", "getReadiness",
                 "getMetrics"}
CLASSIFY_HEADERS = {"x-request-timeout", "x-canary-key", "x-client-id"}
KEY = "rest-key-0123456789"


@pytest.fixture(scope="module")
def spec(gateway) -> dict:
    return httpx.get(f"{gateway.http_url}/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def keyed_without_model_server():
    """A gateway with an API key whose model server is not there: every classify is a 503."""
    gw = stack.start_gateway(backend=f"127.0.0.1:{free_port()}", wait_ready=False,
                             extra_args=[f"--api-keys=tests:{KEY}"])
    yield gw
    gw.process.stop()


def resolved(spec: dict, schema: dict) -> dict:
    """`schema` made self-contained: its $refs into the document's components resolve."""
    return {**schema, "components": spec["components"]}


def declared(spec: dict, path: str, method: str, response: httpx.Response) -> dict:
    """The answer's JSON, after checking it against what /openapi.json declares for its status:
    the body's schema and the x-request-id header."""
    promise = spec["paths"][path][method]["responses"][str(response.status_code)]
    assert "x-request-id" in promise["headers"] and response.headers["x-request-id"]
    body = response.json()
    Draft202012Validator(resolved(spec, promise["content"]["application/json"]["schema"])).validate(body)
    return body


def error_of(spec: dict, response: httpx.Response) -> dict:
    """The error in an answer, checked against the error body's schema; its request id is the header's."""
    body = response.json()
    Draft202012Validator(resolved(spec, {"$ref": "#/components/schemas/ErrorOut"})).validate(body)
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


def parts(images: list[bytes], names: list[str]) -> list[tuple]:
    return [("image", (name, image, "image/png")) for name, image in zip(names, images)]


# -- the batch route ------------------------------------------------------------------------------

def test_a_bad_image_among_eight_fails_alone_at_its_index(gateway, spec, images):
    batch = [*images[:3], b"not an image", *images[3:7]]
    names = [f"item-{i}.png" for i in range(8)]
    response = httpx.post(f"{gateway.http_url}/v1/classify:batch", files=parts(batch, names), timeout=30)
    answers = declared(spec, "/v1/classify:batch", "post", response)["responses"]
    assert [a["index"] for a in answers] == list(range(8)) and [a["id"] for a in answers] == names
    assert "error" not in answers[2] and "error" not in answers[4]
    error = answers[3]["error"]
    assert (error["code"], error["reason"], error["request_id"]) == \
        ("INVALID_ARGUMENT", "INVALID_IMAGE", response.headers["x-request-id"])
    singles = [httpx.post(f"{gateway.http_url}/v1/classify", content=image, headers={"content-type": "image/png"},
                          timeout=30).json() for image in images[:7]]
    good = [{k: v for k, v in a.items() if k not in ("index", "id")} for i, a in enumerate(answers) if i != 3]
    assert_same_answers(good, singles)

    named = httpx.post(f"{gateway.http_url}/v1/models/fashion:classifyBatch", params={"top_k": 2, "version": 1},
                       files=parts(images[:2], ["a", "b"]), timeout=30)
    answers = declared(spec, "/v1/models/{model}:classifyBatch", "post", named)["responses"]
    assert [(a["model_version"], len(a["predictions"])) for a in answers] == [(1, 2), (1, 2)]


def test_more_images_than_the_limit_fail_the_whole_call(gateway, spec, images):
    response = httpx.post(f"{gateway.http_url}/v1/classify:batch", files=parts(images[:1] * 65, ["x.png"] * 65),
                          timeout=30)
    assert response.status_code == 413 and "retry-after" not in response.headers
    error = error_of(spec, response)
    assert (error["code"], error["reason"], error["metadata"]) == ("RESOURCE_EXHAUSTED", "TOO_MANY_IMAGES",
                                                                  {"limit": "64"})
    example = next(e["error"] for e in spec["components"]["schemas"]["ErrorOut"]["examples"]
                   if e["error"]["reason"] == "TOO_MANY_IMAGES")
    assert error["message"] == example["message"]  # the documented example is what the route says
    declared(spec, "/v1/classify:batch", "post", response)


# -- query parameters and headers -------------------------------------------------------------------

def test_version_and_label_query_parameters(gateway, spec, images):
    def classify(**params) -> httpx.Response:
        return httpx.post(f"{gateway.http_url}/v1/classify", params=params, content=images[0],
                          headers={"content-type": "image/png"}, timeout=30)

    assert declared(spec, "/v1/classify", "post", classify(version=1))["model_version"] == 1
    for params, status, reason in [({"version": 7}, 404, "VERSION_NOT_FOUND"),
                                   ({"version_label": "nonesuch"}, 404, "VERSION_NOT_FOUND"),
                                   ({"version": 1, "version_label": "stable"}, 400, "INVALID_ARGUMENT"),
                                   ({"version": -1}, 400, "INVALID_ARGUMENT")]:
        response = classify(**params)
        assert (response.status_code, error_of(spec, response)["reason"]) == (status, reason), params
        declared(spec, "/v1/classify", "post", response)


def test_the_deadline_header_is_enforced(gateway, spec, images):
    url = f"{gateway.http_url}/v1/classify"
    for headers in ({"x-request-timeout": "0.001"}, {"grpc-timeout": "1u"}):
        response = httpx.post(url, content=images[0], headers={"content-type": "image/png", **headers}, timeout=30)
        assert response.status_code == 504, (headers, response.text)
        assert error_of(spec, response)["reason"] == "DEADLINE_EXCEEDED"
    batch = httpx.post(f"{url}:batch", files=parts(images[:4], "abcd"), headers={"x-request-timeout": "0.001"},
                       timeout=30)
    assert batch.status_code == 504 and error_of(spec, batch)["reason"] == "DEADLINE_EXCEEDED"
    for bad in ({"x-request-timeout": "soon"}, {"x-request-timeout": "-1"}, {"grpc-timeout": "5 seconds"}):
        response = httpx.post(url, content=images[0], headers={"content-type": "image/png", **bad}, timeout=30)
        assert response.status_code == 400 and error_of(spec, response)["reason"] == "INVALID_ARGUMENT", bad
    patient = httpx.post(url, content=images[0], headers={"content-type": "image/png", "x-request-timeout": "30"},
                         timeout=30)
    declared(spec, "/v1/classify", "post", patient)


def test_the_caller_is_in_the_log_line_and_the_metrics_and_probes_are_quiet(gateway, images):
    httpx.post(f"{gateway.http_url}/v1/classify", content=images[1], timeout=30,
               headers={"content-type": "image/png", "x-client-id": "billing-svc", "x-request-id": "caller-1"})
    line = wait_until(lambda: [json.loads(l) for l in gateway.process.output(400).splitlines() if "caller-1" in l],
                      10, "the request's log line")[0]
    assert (line["caller"], line["route"], line["status"]) == ("billing-svc", "POST /v1/classify", "200")
    assert metric(gateway.http_url, "gateway_caller_queue_wait_seconds_count", caller="billing-svc") >= 1

    probes = metric(gateway.http_url, "gateway_requests_total", route="GET /readyz")
    probe = httpx.get(f"{gateway.http_url}/readyz", headers={"x-request-id": "quiet-probe-1"}, timeout=10)
    assert probe.status_code == 200
    httpx.get(f"{gateway.http_url}/v1/models", headers={"x-request-id": "next-request-1"}, timeout=10)
    output = wait_until(lambda: "next-request-1" in gateway.process.output(400) and gateway.process.output(400),
                        10, "the next request's log line")
    assert "quiet-probe-1" not in output, "a probe was logged at info level"
    assert metric(gateway.http_url, "gateway_requests_total", route="GET /readyz") == probes + 1


# -- errors and their headers ----------------------------------------------------------------------------

def test_error_bodies_and_headers_follow_the_table(gateway, spec, keyed_without_model_server, images):
    url = gateway.http_url
    unknown = httpx.post(f"{url}/v1/models/shoes:classify", content=images[0], headers={"content-type": "image/png"},
                         timeout=30)
    assert unknown.status_code == 404 and error_of(spec, unknown)["reason"] == "MODEL_NOT_FOUND"
    declared(spec, "/v1/models/{model}:classify", "post", unknown)
    for response, status, code in [(httpx.get(f"{url}/no/such/route", timeout=10), 404, "NOT_FOUND"),
                                   (httpx.get(f"{url}/v1/classify", timeout=10), 405, "UNIMPLEMENTED")]:
        error = error_of(spec, response)  # no reason: the client library takes it for a gateway without the route
        assert (response.status_code, error["code"], "reason" in error) == (status, code, False)

    keyed = keyed_without_model_server.http_url
    refused = httpx.post(f"{keyed}/v1/classify", content=images[0], headers={"content-type": "image/png"}, timeout=30)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert error_of(spec, refused)["reason"] == "UNAUTHENTICATED" and "retry-after" not in refused.headers

    down = httpx.post(f"{keyed}/v1/classify", content=images[0], timeout=30,
                      headers={"content-type": "image/png", "authorization": f"Bearer {KEY}"})
    assert down.status_code == 503, down.text
    error = error_of(spec, down)
    assert error["reason"] in ("UNAVAILABLE", "CIRCUIT_OPEN")
    assert down.headers["retry-after"] == str(math.ceil(error["retry_after"]))
    declared(spec, "/v1/classify", "post", down)
    declared(spec, "/readyz", "get", httpx.get(f"{keyed}/readyz", timeout=10))  # 503, the readiness body


def test_overload_is_a_429_with_retry_after(model_server, spec):
    """One decode at a time, and images that take a while to decode: of eight at once, some are refused."""
    buf = io.BytesIO()
    Image.effect_noise((1536, 1536), 64).save(buf, "PNG")
    big = buf.getvalue()
    gw = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--max-pending-decodes=1", "--max-queue=1"])

    async def wave() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/classify", content=big, headers={"content-type": "image/png"}) for _ in range(8)))

    try:
        refused = wait_until(lambda: [r for r in asyncio.run(wave()) if r.status_code == 429], 60, "a 429")
    finally:
        gw.process.stop()
    error = error_of(spec, refused[0])
    assert (error["code"], error["reason"]) == ("RESOURCE_EXHAUSTED", "OVERLOADED")
    assert refused[0].headers["retry-after"] == str(math.ceil(error["retry_after"]))
    declared(spec, "/v1/classify", "post", refused[0])


def test_an_unexpected_exception_is_one_log_line_and_a_500_with_the_request_id(caplog):
    """In-process: RequestMiddleware around an app that raises (the pure unit; the real routes do not)."""
    async def broken(scope, receive, send) -> None:
        raise RuntimeError("boom at 0xdeadbeef")

    async def call() -> httpx.Response:
        # ASGITransport re-raises what escapes the app: the middleware must let nothing escape.
        transport = httpx.ASGITransport(app=RequestMiddleware(broken, Metrics(), ApiKeyAuth(())))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/v1/models", headers={"x-request-id": "boom-1"})

    caplog.set_level(logging.INFO)
    response = asyncio.run(call())
    assert (response.status_code, response.headers["x-request-id"]) == (500, "boom-1")
    assert response.json() == {"error": {"code": "INTERNAL", "reason": "INTERNAL", "request_id": "boom-1",
                                         "message": "internal error; the request id is in the gateway's log"}}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and errors[0].fields["request_id"] == "boom-1"
    lines = [r.fields for r in caplog.records if r.name == "gateway.requests"]
    assert [(f["request_id"], f["status"]) for f in lines] == [("boom-1", "500")]


# -- the OpenAPI document --------------------------------------------------------------------------------

def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_openapi_operations_headers_and_bodies(spec):
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert sorted(ids) == sorted(OPERATION_IDS)
    text = json.dumps(spec)
    assert '"422"' not in text and "ValidationError" not in text
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    parameters = spec["components"]["parameters"]
    for path, method, op in operations(spec):
        names = {parameters[p["$ref"].rsplit("/", 1)[1]]["name"] for p in op["parameters"] if "$ref" in p}
        assert "x-request-id" in names, (path, method)
        if op["operationId"].startswith("classify"):
            assert CLASSIFY_HEADERS <= names, (path, method)
            assert {"200", "400", "404", "413", "429", "500", "503", "504"} <= set(op["responses"]), path
        for status, response in op["responses"].items():
            assert "x-request-id" in response["headers"], (path, status)
            error_body = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            if status in ("429", "503") and error_body.endswith("/ErrorOut"):
                assert "retry-after" in response["headers"], (path, status)
    query = {p["name"]: p["schema"] for p in spec["paths"]["/v1/classify"]["post"]["parameters"] if p.get("in") == "query"}
    assert (query["top_k"]["minimum"], query["version"]["minimum"], query["version_label"]["maxLength"]) == (0, 0, 128)
    single = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert single["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert all(single[t]["schema"] == {"type": "string", "format": "binary"} for t in ("image/png", "image/jpeg"))
    batch = spec["paths"]["/v1/classify:batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["image"]["items"] == {"type": "string", "format": "binary"}


def test_openapi_of_a_gateway_with_keys_requires_them(keyed_without_model_server):
    url = keyed_without_model_server.http_url
    assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 401
    spec = httpx.get(f"{url}/openapi.json", headers={"authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []  # probes need no key (public_health_and_metrics)
    refused = spec["paths"]["/v1/classify"]["post"]["responses"]["401"]
    assert {"x-request-id", "www-authenticate"} <= set(refused["headers"])


def test_every_example_validates_against_its_schema(spec):
    checked = 0
    for name, schema in spec["components"]["schemas"].items():
        for example in schema.get("examples", []):
            Draft202012Validator(resolved(spec, schema)).validate(example)
            checked += 1
    for parameter in spec["components"]["parameters"].values():
        if "example" in parameter:
            Draft202012Validator(parameter["schema"]).validate(parameter["example"])
            checked += 1
    assert checked >= 10, checked


def test_models_examples_fleet_and_probes_answer_as_declared(gateway, spec):
    for path in ("/v1/models", "/v1/examples", "/v1/fleet", "/healthz", "/readyz"):
        declared(spec, path, "get", httpx.get(f"{gateway.http_url}{path}", timeout=10))
