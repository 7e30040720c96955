"""The gateway over the wire: real model server, real gateway, real gRPC and HTTP clients.

The gateway under test is a `python -m gateway` subprocess, talked to through the classifier.v1
stubs, grpc health/reflection and HTTP, and watched through its /metrics.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from gateway.thresholds import Thresholds, decide
from helpers import (FASHION_LABELS, answer_json, assert_same_answers, fashion_test_images, free_port, png,
                     samples)
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "classifier.v1.Classifier"


# -- helpers ------------------------------------------------------------------------------------

def predict_calls(http_url: str) -> float:
    return sum(v for labels, v in samples(http_url, "gateway_backend_requests_total") if labels["method"] == "Predict")


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status



@pytest.fixture(scope="module")
def stub(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield pb_grpc.ClassifierStub(channel)


# -- the API over gRPC ------------------------------------------------------------------------------

def test_classify_over_grpc(stub, images):
    response, call = stub.Classify.with_call(pb.ClassifyRequest(image=images[0]), timeout=30,
                                             metadata=[("x-request-id", "test-classify-1")])
    assert (response.model, response.model_version) == ("fashion", 1)
    scores = [p.score for p in response.predictions]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {p.label for p in response.predictions} <= set(FASHION_LABELS)
    if response.confident:
        assert response.label == response.predictions[0].label
    else:
        assert response.label == "not sure"
    assert dict(call.trailing_metadata())["x-request-id"] == "test-classify-1"


def test_top_k_and_named_model(stub, images):
    three = stub.Classify(pb.ClassifyRequest(model="fashion", image=images[1], top_k=3), timeout=30)
    everything = stub.Classify(pb.ClassifyRequest(image=images[1], top_k=50), timeout=30)
    assert len(three.predictions) == 3 and len(everything.predictions) == 10
    assert list(three.predictions) == list(everything.predictions)[:3]
    assert abs(sum(p.score for p in everything.predictions) - 1.0) < 1e-4


def test_classify_batch_answers_in_order(stub, images):
    singles = [stub.Classify(pb.ClassifyRequest(image=img), timeout=30) for img in images[:8]]
    batch = stub.ClassifyBatch(pb.ClassifyBatchRequest(
        requests=[pb.ClassifyRequest(image=img) for img in images[:8]]), timeout=30)
    assert_same_answers([answer_json(r) for r in batch.responses], [answer_json(r) for r in singles])


def test_classify_stream_answers_in_order(stub, images):
    singles = [stub.Classify(pb.ClassifyRequest(image=img), timeout=30) for img in images[:40]]
    call = stub.ClassifyStream(iter(pb.ClassifyRequest(image=img) for img in images[:40]), timeout=60,
                               metadata=[("x-request-id", "test-stream-1")])
    assert dict(call.initial_metadata())["x-request-id"] == "test-stream-1"  # before the first answer
    answers = list(call)
    assert dict(call.trailing_metadata())["x-request-id"] == "test-stream-1"
    assert_same_answers([answer_json(r) for r in answers], [answer_json(r) for r in singles])


def reason_of(status) -> str:
    """The google.rpc.ErrorInfo reason in a google.rpc.Status."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def test_one_bad_image_among_eight_answers_with_its_own_error_in_batch_and_stream(stub, images):
    requests = [pb.ClassifyRequest(image=images[i], id=f"img-{i}") for i in range(8)]
    requests[3] = pb.ClassifyRequest(image=b"not an image", id="broken")
    for answers in (stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=requests), timeout=30).responses,
                    list(stub.ClassifyStream(iter(requests), timeout=30))):
        assert [a.index for a in answers] == list(range(8)) and [a.id for a in answers] == [r.id for r in requests]
        failed = answers[3]
        assert (failed.error.code, failed.model, failed.label) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "", "")
        assert reason_of(failed.error) == "INVALID_IMAGE" and "not an image" in failed.error.message
        assert all(a.label and not a.HasField("error") for i, a in enumerate(answers) if i != 3)


def test_a_stream_answers_each_image_without_waiting_for_the_next(stub, images):
    sent: queue.Queue = queue.Queue()
    stream = stub.ClassifyStream(iter(sent.get, None), timeout=30)
    for i in range(3):
        sent.put(pb.ClassifyRequest(image=images[i], id=str(i)))
        assert next(stream).id == str(i)   # would block until the deadline if answers waited for reads
    sent.put(None)
    assert list(stream) == []


def test_list_models(stub):
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert [(m.name, m.version, list(m.labels), m.state) for m in models] == \
        [("fashion", 1, FASHION_LABELS, "AVAILABLE")]
    assert (models[0].input.height, models[0].input.width, models[0].input.channels) == (28, 28, 1)


def test_errors_over_grpc_follow_the_table(stub, images):
    cases = [
        (pb.ClassifyRequest(model="no-such-model", image=images[0]), grpc.StatusCode.NOT_FOUND, "unknown model",
         "MODEL_NOT_FOUND"),
        (pb.ClassifyRequest(image=b"\x00garbage bytes\xff" * 10), grpc.StatusCode.INVALID_ARGUMENT, "not an image",
         "INVALID_IMAGE"),
        (pb.ClassifyRequest(image=b""), grpc.StatusCode.INVALID_ARGUMENT, "empty", "INVALID_IMAGE"),
        (pb.ClassifyRequest(image=images[0], top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "top_k", "INVALID_ARGUMENT"),
    ]
    for request, code, words, reason in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(request, timeout=30, metadata=[("x-request-id", "bad-1")])
        assert err.value.code() == code and words in err.value.details()
        assert dict(err.value.trailing_metadata())["x-request-id"] == "bad-1"
        status = rpc_status.from_call(err.value)
        assert reason_of(status) == reason and status.message == err.value.details()


def test_too_many_images_fail_the_whole_batch_with_their_reason(stub, images):
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(image=images[0])] * 65), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(rpc_status.from_call(err.value)) == "TOO_MANY_IMAGES"


def test_messages_over_the_limit_are_answered_by_the_gateway_with_a_request_id(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(image=bytes(20 * 2**20)), timeout=30, metadata=[("x-request-id", "big-1")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the limit" in err.value.details()
    assert dict(err.value.trailing_metadata())["x-request-id"] == "big-1"
    assert reason_of(rpc_status.from_call(err.value)) == "TOO_LARGE"


def test_health_and_reflection(gateway):
    for service in ("", SERVICE):
        assert health_status(gateway.grpc_target, service) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10)
        names = {s.name for a in answers for s in a.list_services_response.service}
        # grpc.reflection.v1 has v1alpha's messages under another name: what newer tools ask first.
        v1 = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                   request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                   response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        file = next(iter(v1(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]),
                            timeout=10))).file_descriptor_response
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection"} <= names
    assert file.file_descriptor_proto, "grpc.reflection.v1 did not describe the classifier service"


# -- the API over REST --------------------------------------------------------------------------------

def test_rest_multipart_and_raw_body_give_the_grpc_answer(gateway, stub, images):
    expected = answer_json(stub.Classify(pb.ClassifyRequest(image=images[2]), timeout=30))
    url = gateway.http_url
    multipart = httpx.post(f"{url}/v1/classify", files={"image": ("shoe.png", images[2], "image/png")}, timeout=30)
    raw = httpx.post(f"{url}/v1/models/fashion:classify", content=images[2],
                     headers={"content-type": "image/png", "x-request-id": "rest-raw-1"}, timeout=30)
    assert multipart.status_code == raw.status_code == 200
    assert_same_answers([multipart.json(), raw.json()], [expected, expected])
    assert raw.headers["x-request-id"] == "rest-raw-1"
    assert "predict;dur=" in raw.headers["server-timing"]
    top2 = httpx.post(f"{url}/v1/classify", params={"top_k": 2}, content=images[2],
                      headers={"content-type": "image/png"}, timeout=30).json()
    assert_same_answers([top2], [{**expected, "predictions": expected["predictions"][:2]}])


@pytest.mark.parametrize("path, kwargs, status, code", [
    ("/v1/models/no-such-model:classify", {"content": b"x", "headers": {"content-type": "image/png"}}, 404, "NOT_FOUND"),
    ("/v1/classify", {"content": b"garbage" * 20, "headers": {"content-type": "image/jpeg"}}, 400, "INVALID_ARGUMENT"),
    ("/v1/classify", {"files": {"image": ("a.txt", b"hello", "text/plain")}}, 400, "INVALID_ARGUMENT"),
    ("/v1/classify", {"files": {"photo": ("a.png", b"x", "image/png")}}, 400, "INVALID_ARGUMENT"),
    ("/v1/classify", {"content": b"{}", "headers": {"content-type": "application/json"}}, 400, "INVALID_ARGUMENT"),
    ("/v1/classify?top_k=lots", {"content": b"x", "headers": {"content-type": "image/png"}}, 400, "INVALID_ARGUMENT"),
    ("/v1/classify", {"content": bytes(11 * 2**20), "headers": {"content-type": "image/png"}}, 413, "RESOURCE_EXHAUSTED"),
])
def test_rest_errors_follow_the_table(gateway, path, kwargs, status, code):
    response = httpx.post(f"{gateway.http_url}{path}", timeout=30, **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "127.0.0.1" not in response.text


def test_rest_models_health_readiness_docs_and_page(gateway):
    url = gateway.http_url
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
    assert [(m["name"], m["version"], m["state"], m["input"]) for m in models] == [("fashion", 1, "AVAILABLE", "28x28x1")]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["models"] == {"fashion": "AVAILABLE"}
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    for route in ("/v1/classify", "/v1/models/{model}:classify", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert route in spec["paths"], route
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(body)
    assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.text.strip()
    examples = httpx.get(f"{url}/v1/examples", timeout=10).json()["examples"]
    for example in examples:  # relative URLs the page fetches (works behind a path prefix too)
        assert httpx.get(f"{url}/{example['url']}", timeout=10).status_code == 200, example



def _get_on(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One HTTP/1.1 keep-alive request on an open socket; the raw response head and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())

    def more(data: bytes) -> bytes:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        return data + chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data = more(data)
    head = data.partition(b"\r\n\r\n")[0]
    total = len(head) + 4 + int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(data) < total:
        data = more(data)
    return data


def test_idle_rest_connections_outlive_client_pools(model_server, gateway):
    """A server that closes idle connections when client pools still reuse them (uvicorn's 5 s
    default equals httpx's pool expiry) makes some requests fail with a connection reset. The
    default keep-alive outlives the pools, and the setting reaches the HTTP server."""
    from gateway.settings import Settings
    assert Settings().http_keepalive_seconds > httpx.Limits().keepalive_expiry
    short = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--http-keepalive-seconds=0.5"])
    try:
        with socket.create_connection(("127.0.0.1", short.http_port), timeout=30) as closing, \
                socket.create_connection(("127.0.0.1", gateway.http_port), timeout=30) as staying:
            assert _get_on(closing).startswith(b"HTTP/1.1 200")
            assert _get_on(staying).startswith(b"HTTP/1.1 200")
            assert closing.recv(1) == b"", "the short keep-alive did not close the idle connection"
            # `staying` has now been idle longer than 0.5 s too, and is still open
            assert _get_on(staying).startswith(b"HTTP/1.1 200")
    finally:
        short.process.stop()

# -- observability ------------------------------------------------------------------------------------

def test_metrics_cover_requests_stages_batches_and_decisions(gateway, stub, images):
    stub.Classify(pb.ClassifyRequest(image=images[3]), timeout=30)
    httpx.post(f"{gateway.http_url}/v1/classify", content=images[3], headers={"content-type": "image/png"}, timeout=30)
    text = httpx.get(f"{gateway.http_url}/metrics", timeout=10).text
    for name in ("gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_inflight_requests",
                 "gateway_stage_duration_seconds_bucket", "gateway_batch_size_bucket", "gateway_queue_depth",
                 "gateway_circuit_state", "gateway_decisions_total", "gateway_backend_requests_total",
                 "gateway_model_available", "gateway_ready", "process_resident_memory_bytes"):
        assert f"\n{name}" in text, name
    for stage in ("decode", "queue_wait", "predict", "decide"):
        assert f'stage="{stage}"' in text, stage
    requests = [labels for labels, _ in samples(gateway.http_url, "gateway_requests_total")]
    assert {"transport": "grpc", "route": "Classify", "model": "fashion", "version": "1", "status": "OK"} in requests
    assert {"transport": "http", "route": "POST /v1/classify", "model": "fashion", "version": "1", "status": "200"} in requests
    assert samples(gateway.http_url, "gateway_circuit_state") == [({}, 0.0)]
    decisions = [labels for labels, _ in samples(gateway.http_url, "gateway_decisions_total")]
    assert decisions and all(labels["version"] == "1" for labels in decisions)
    assert samples(gateway.http_url, "gateway_endpoints") == [({"state": "healthy"}, 1.0), ({"state": "ejected"}, 0.0)]


def test_one_json_log_line_per_request_without_image_bytes(gateway, stub, images):
    stub.Classify(pb.ClassifyRequest(image=images[4]), timeout=30, metadata=[("x-request-id", "log-line-1")])
    lines = []
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:  # the log is drained by a thread in this process
        lines = [json.loads(l) for l in gateway.process.output(200).splitlines() if "log-line-1" in l]
    assert len(lines) == 1, lines
    line = lines[0]
    assert (line["event"], line["transport"], line["route"], line["model"], line["version"], line["status"]) == \
        ("request", "grpc", "Classify", "fashion", 1, "OK")
    assert set(line["stages_ms"]) == {"decode", "queue_wait", "predict", "decide"}
    assert "image" not in line and len(json.dumps(line)) < 1000


def test_gateway_stays_lean(gateway):
    pid = gateway.process.proc.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "tensorflow" not in maps, "the gateway process has TensorFlow's libraries loaded"
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))
    print(f"\ngateway RSS after the tests so far: {rss_kb / 1024:.1f} MiB")
    assert rss_kb <= 150 * 1024
    check = ("import sys, gateway.server, gateway.client, gateway.core, gateway.rest, gateway.grpc_service; "
             "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)


# -- answers: the same decisions as the model in-process ------------------------------------------------

@pytest.mark.slow
def test_decisions_match_the_in_process_model(gateway, stub, fashion_data, tiny_models_dir):
    import numpy as np
    import tensorflow as tf

    pixels = fashion_test_images(fashion_data, 300)
    model = tf.saved_model.load(str(tiny_models_dir / "fashion" / "1"))
    batch = np.frombuffer(b"".join(pixels), np.uint8).reshape(-1, 28, 28, 1)
    outputs = model.signatures["serving_default"](images=tf.constant(batch))
    labels = [c.decode() for c in outputs["classes"].numpy()[0]]
    scores = outputs["scores"].numpy()
    ood = outputs["ood_score"].numpy() if "ood_score" in outputs else [None] * len(scores)
    limit = outputs["ood_threshold"].numpy() if "ood_threshold" in outputs else [None] * len(scores)
    expected = [decide(labels, row.tolist(), Thresholds(), "not sure", 10, o, t) for row, o, t in zip(scores, ood, limit)]

    answers = []
    for start in range(0, len(pixels), 50):
        chunk = [pb.ClassifyRequest(image=png(p), top_k=10) for p in pixels[start:start + 50]]
        answers += stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=chunk), timeout=60).responses
    assert len(answers) == len(expected) == 300
    mismatches = []
    for i, (got, want) in enumerate(zip(answers, expected)):
        got_scores = {p.label: p.score for p in got.predictions}
        want_scores = {p.label: p.score for p in want.predictions}
        if (got.label, got.confident, pb.ClassifyResponse.Reason.Name(got.reason)) != \
                (want.label, want.confident, want.reason) or \
                any(abs(got_scores[k] - want_scores[k]) > 1e-5 for k in want_scores):
            mismatches.append((i, got.label, want.label))
    assert not mismatches, mismatches[:10]


# -- batching, readiness, shutdown: dedicated gateways ---------------------------------------------------

@pytest.mark.slow
def test_the_batcher_coalesces_concurrent_requests_and_sends_a_lone_one_at_once(model_server, images):
    gw = stack.start_gateway(backend=model_server.grpc_target,
                             extra_args=["--max-wait-ms=1000", "--max-batch-size=16"])
    try:
        # idle: nothing in flight to wait for, so a lone request does not sit out max_wait_ms
        lone = httpx.post(f"{gw.http_url}/v1/classify", content=images[0], headers={"content-type": "image/png"},
                          timeout=30)
        assert lone.status_code == 200, lone.text
        queue_ms = float(re.search(r"queue_wait;dur=([\d.]+)", lone.headers["server-timing"]).group(1))
        assert queue_ms < 500, f"a lone request waited {queue_ms:.0f} ms for a batch (max_wait_ms 1000)"

        before = predict_calls(gw.http_url)

        async def burst() -> list:
            async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
                aio_stub = pb_grpc.ClassifierStub(channel)
                return await asyncio.gather(*(aio_stub.Classify(pb.ClassifyRequest(image=img), timeout=30)
                                              for img in images[:32]))

        answers = asyncio.run(burst())
        assert len(answers) == 32 and all(a.model == "fashion" for a in answers)
        calls = predict_calls(gw.http_url) - before
        sizes = [v for _, v in samples(gw.http_url, "gateway_batch_size_sum")]
        print(f"\n32 concurrent requests -> {calls:.0f} Predict calls")
        assert calls <= 4, f"{calls} Predict calls for 32 concurrent requests"
        assert sum(sizes) == 33
    finally:
        gw.process.stop()


@pytest.mark.slow
def test_health_turns_serving_only_once_the_model_is_available(tiny_models_dir, tmp_path):
    import shutil

    port = free_port()
    gw = stack.start_gateway(backend=f"127.0.0.1:{port}", wait_ready=False)
    server = None
    try:
        assert health_status(gw.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(gw.grpc_target, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert httpx.get(f"{gw.http_url}/readyz", timeout=10).status_code == 503
        with grpc.insecure_channel(gw.grpc_target) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(image=png(bytes(784))), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 1.0, "a down model server must fail fast"

        shutil.copytree(tiny_models_dir / "fashion", tmp_path / "fashion")
        server = stack.start_model_server(model_base_path=tmp_path / "fashion", port=port, wait_available=False)
        server_up = time.monotonic()  # it has logged its ports (the model may still be loading)
        with grpc.insecure_channel(gw.grpc_target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=120)
            for update in watch:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    serving_at = time.monotonic()
                    state = httpx.get(f"{server.rest_url}/v1/models/fashion", timeout=10).json()
                    assert "AVAILABLE" in [v["state"] for v in state["model_version_status"]]
                    watch.cancel()
                    break
        assert httpx.get(f"{gw.http_url}/readyz", timeout=10).status_code == 200
        print(f"\ngateway SERVING {serving_at - server_up:.2f} s after the model server came up")
        assert serving_at - server_up < 5.0, "the gateway should be ready soon after the model server"
    finally:
        gw.process.stop()
        if server is not None:
            server.process.stop()


@pytest.mark.slow
def test_a_new_model_version_is_picked_up_without_failed_requests(tiny_models_dir, tmp_path, images):
    import shutil

    base = tmp_path / "fashion"
    shutil.copytree(tiny_models_dir / "fashion", base)
    server = stack.start_model_server(model_base_path=base, extra_args=["--file_system_poll_wait_seconds=1"])
    gw = stack.start_gateway(backend=server.grpc_target, extra_args=["--health-check-interval-seconds=0.5"])
    try:
        async def load_until_version_2() -> tuple[int, set[int], list]:
            answered, versions, failures = 0, set(), []
            async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
                aio_stub = pb_grpc.ClassifierStub(channel)
                swapped_at = None

                async def worker(i: int) -> None:
                    nonlocal answered, swapped_at
                    loop = asyncio.get_running_loop()
                    while swapped_at is None or loop.time() - swapped_at < 1.0:  # and 1 s on v2
                        try:
                            answer = await aio_stub.Classify(pb.ClassifyRequest(image=images[i]), timeout=30)
                        except grpc.RpcError as exc:
                            failures.append((exc.code(), exc.details()))
                            continue
                        answered += 1
                        versions.add(answer.model_version)
                        if answer.model_version == 2 and swapped_at is None:
                            swapped_at = loop.time()

                async def publish_version_2() -> None:
                    await asyncio.sleep(0.5)  # let the load run on version 1 first
                    shutil.copytree(base / "1", tmp_path / "staging")  # atomic publish, as training does
                    (tmp_path / "staging").rename(base / "2")

                await asyncio.wait_for(asyncio.gather(publish_version_2(), *(worker(i) for i in range(8))), 120)
            return answered, versions, failures

        answered, versions, failures = asyncio.run(load_until_version_2())
        print(f"\n{answered} requests across the version swap, {len(failures)} failed")
        assert not failures, failures[:5]
        assert versions == {1, 2}
        models = httpx.get(f"{gw.http_url}/v1/models", timeout=10).json()["models"]
        assert (models[0]["version"], models[0]["state"]) == (2, "AVAILABLE")
    finally:
        gw.process.stop()
        server.process.stop()


@pytest.mark.slow
def test_sigterm_drains_then_exits_zero(model_server, images):
    gw = stack.start_gateway(backend=model_server.grpc_target,
                             extra_args=["--shutdown-delay-seconds=2", "--shutdown-grace-seconds=120"])
    assert httpx.get(f"{gw.http_url}/readyz", timeout=10).status_code == 200
    # A health Watch open across the shutdown (a proxy's, say) is told NOT_SERVING and then ended,
    # rather than holding the exit for the whole grace period.
    watch_channel = grpc.insecure_channel(gw.grpc_target)
    watch = health_pb2_grpc.HealthStub(watch_channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    gw.process.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    ready = 200
    while ready == 200 and time.monotonic() < deadline:  # polling another process over HTTP
        ready = httpx.get(f"{gw.http_url}/readyz", timeout=10).status_code
    assert ready == 503
    assert health_status(gw.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
    # Still answering while draining: in-flight and late requests are not dropped.
    assert httpx.post(f"{gw.http_url}/v1/classify", content=images[0], headers={"content-type": "image/png"},
                      timeout=30).status_code == 200
    assert [answer.status for answer in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert watch.code() == grpc.StatusCode.OK
    watch_channel.close()
    assert gw.process.proc.wait(timeout=30) == 0  # well inside the 120 s grace
