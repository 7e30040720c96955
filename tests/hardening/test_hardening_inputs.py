"""Hostile input over both transports, against the real gateway (README, "Errors").

Every image of tests/hostile_images.py goes over gRPC and REST: the broken ones get
INVALID_ARGUMENT / 400 with a message that says what is wrong, the odd but decodable ones get the
answer the same picture gets as a plain PNG (so orientation, alpha, 16-bit and CMYK are decoded
right, not merely accepted). Then the other rows of the table - top_k, unknown model, huge batch,
sizes over the limit, malformed multipart, undecodable protobuf, a trickled body - and finally the
gateway's resident memory over thousands of such requests.

Every error answer is checked by `assert_clean_error`: a message, the request id, nothing internal.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import socket
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import fashion_test_images, metric
from hardening_support import (assert_clean_error, classify_grpc, classify_rest, hostile_requests, rest_answer, rss_mib, send_all)
from hostile_images import (MALFORMED_MULTIPART, as_animated, as_cmyk_jpeg, as_exif_rotated,
                            as_palette_png_with_alpha, as_sixteen_bit_png, as_stored_sideways,
                            hostile_cases, one_by_one, png, with_transparent_as_black)
from tools import stack

HOSTILE_REQUESTS = 2000
LABELS = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
          "Ankle boot", "not sure"}


@pytest.fixture(scope="module")
def stub(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield pb_grpc.ClassifierStub(channel)


@pytest.fixture(scope="module")
def rest(gateway):
    with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def pixels(fashion_data) -> list[bytes]:
    return fashion_test_images(fashion_data, 60)


def both(stub, rest, image: bytes, content_type: str = "image/png", request_id: str = "", **kwargs):
    """The answers over gRPC and REST to the same request."""
    metadata = [("x-request-id", request_id)] if request_id else []
    headers = {"x-request-id": request_id} if request_id else {}
    return (classify_grpc(stub, image, metadata=metadata, **kwargs),
            classify_rest(rest, image, content_type=content_type, headers=headers, **kwargs))


def margin(stub, image: bytes) -> tuple[str, float]:
    """The top label and how far its score leads the runner-up's."""
    first, second = classify_grpc(stub, image, top_k=2).body["predictions"]
    return first["label"], first["score"] - second["score"]


def decisive(stub, pixels: list[bytes], lead: float = 0.15):
    """Images the (small, test-trained) model answers with a clear lead: lossy encodings of them
    must keep their top label."""
    return (image for image in pixels if margin(stub, png(image))[1] >= lead)


def assert_same_answer(got: dict, want: dict, tolerance: float = 1e-6) -> None:
    assert (got["label"], got["confident"]) == (want["label"], want["confident"]), (got, want)
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    for a, b in zip(got["predictions"], want["predictions"]):
        assert abs(a["score"] - b["score"]) <= tolerance, (got, want)


# -- every hostile image, both transports ---------------------------------------------------------------

@pytest.mark.parametrize("case", hostile_cases(), ids=lambda c: c.name)
def test_hostile_images_get_their_status_from_the_table(stub, rest, case):
    for answer in both(stub, rest, case.data, case.content_type, request_id=f"hostile-{len(case.data)}"):
        if case.decodable:
            assert answer.ok, answer
            assert answer.body["label"] in LABELS and answer.body["predictions"]
            continue
        assert (answer.code, answer.http_status) == (
            "INVALID_ARGUMENT", None if answer.transport == "grpc" else 400), answer
        assert case.message in answer.message, answer.message
        assert_clean_error(answer, given_id=f"hostile-{len(case.data)}")


def test_odd_encodings_get_the_answer_of_the_plain_image(stub, rest, pixels):
    image, other = pixels[0], pixels[1]
    exact = [  # (what, odd encoding, the plain PNG it must be answered as)
        ("16-bit PNG", as_sixteen_bit_png(image), png(image)),
        ("palette PNG, white transparent", as_palette_png_with_alpha(image), png(with_transparent_as_black(image))),
        ("1x1", one_by_one(180), png(bytes([180]) * 784)),
        ("animated PNG: the first frame", as_animated(image, other, "PNG"), png(image)),
        ("animated WebP: the first frame", as_animated(image, other, "WEBP"), png(image)),
        ("EXIF-rotated PNG", as_exif_rotated(image, "PNG", scale=1), png(image)),
    ]
    for what, odd, plain in exact:
        want = classify_grpc(stub, plain, top_k=10)
        for got in both(stub, rest, odd, top_k=10):
            assert got.ok, (what, got)
            assert_same_answer(got.body, want.body)
    # Lossy: the same top label, its score within JPEG noise.
    clear = next(decisive(stub, pixels))
    want = classify_grpc(stub, png(clear), top_k=10)
    for got in both(stub, rest, as_cmyk_jpeg(clear), "image/jpeg", top_k=10):
        assert got.ok and got.body["predictions"][0]["label"] == want.body["predictions"][0]["label"], got
        assert abs(got.body["predictions"][0]["score"] - want.body["predictions"][0]["score"]) < 0.05


def test_exif_orientation_is_applied_so_the_answer_changes(stub, rest, pixels):
    """A photo stored on its side with an EXIF orientation gets the upright picture's answer, which
    here differs from the answer for the pixels as stored - so the rotation is proven applied."""
    chosen = None
    for image in decisive(stub, pixels):
        upright, sideways = margin(stub, png(image))[0], margin(stub, as_stored_sideways(image))[0]
        if upright != sideways:
            chosen = image, upright, sideways
            break
    assert chosen, "no test image whose answer depends on its orientation"
    image, upright_label, sideways_label = chosen
    for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        for answer in both(stub, rest, as_exif_rotated(image, fmt), content_type, top_k=1):
            assert answer.ok, answer
            assert answer.body["predictions"][0]["label"] == upright_label != sideways_label, (fmt, answer)


# -- the other rows of the table ---------------------------------------------------------------------------

def test_top_k_out_of_range(stub, rest, pixels):
    image = png(pixels[2])
    for answer in both(stub, rest, image, top_k=-1):
        assert answer.code == "INVALID_ARGUMENT" and "top_k" in answer.message, answer
        assert_clean_error(answer)
    too_big = rest.post("/v1/classify", params={"top_k": 2**31}, content=image, headers={"content-type": "image/png"})
    assert too_big.status_code == 400 and "top_k" in too_big.json()["error"]["message"]
    not_a_number = rest.post("/v1/classify", params={"top_k": "1e3"}, content=image, headers={"content-type": "image/png"})
    assert not_a_number.status_code == 400
    for answer in both(stub, rest, image, top_k=2**31 - 1):  # more than there are labels: all of them
        assert answer.ok and len(answer.body["predictions"]) == 10, answer


def test_unknown_models_are_not_found_with_a_bounded_message(stub, rest, pixels):
    for name in ("no-such-model", "x" * 5000, "ünïcödé-☃"):
        for answer in both(stub, rest, png(pixels[3]), model=name):
            assert (answer.code, answer.http_status) in {("NOT_FOUND", None), ("NOT_FOUND", 404)}, answer
            assert "unknown model" in answer.message and len(answer.message) < 300, answer.message
            assert_clean_error(answer)


def test_a_huge_classify_batch_is_refused_before_any_work(stub, gateway, pixels):
    before = metric(gateway.http_url, "gateway_backend_requests_total", method="Predict")
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(image=b"x")] * 20_000), timeout=30)
    assert time.perf_counter() - started < 2.0
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 64" in err.value.details()
    assert dict(err.value.trailing_metadata())["x-request-id"]
    assert metric(gateway.http_url, "gateway_backend_requests_total", method="Predict") == before
    at_the_limit = stub.ClassifyBatch(pb.ClassifyBatchRequest(
        requests=[pb.ClassifyRequest(image=png(p)) for p in itertools.islice(itertools.cycle(pixels), 64)]), timeout=60)
    assert len(at_the_limit.responses) == 64


def test_messages_and_bodies_over_the_limit(stub, rest):
    # The gateway refuses an oversized message itself (its MessageGuard, before any handler runs),
    # with a request id like any other error; gRPC's own limit stays far above, as a backstop.
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(image=bytes(17 * 2**20)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the limit" in err.value.details()
    assert dict(err.value.trailing_metadata()).get("x-request-id")

    big = bytes(11 * 2**20)

    def chunks():  # no content-length: the limit must hold while reading
        for start in range(0, len(big), 2**20):
            yield big[start:start + 2**20]

    for what, kwargs in (("declared", {"content": big, "headers": {"content-type": "image/png"}}),
                         ("chunked", {"content": chunks(), "headers": {"content-type": "image/png"}}),
                         ("multipart", {"files": {"image": ("big.png", big, "image/png")}})):
        started = time.perf_counter()
        response = rest.post("/v1/classify", **kwargs)
        answer = rest_answer(started, response)
        assert (answer.http_status, answer.code) == (413, "RESOURCE_EXHAUSTED"), (what, answer)
        assert "limit" in answer.message
        assert_clean_error(answer)


@pytest.mark.parametrize("name, content_type, body, words", MALFORMED_MULTIPART, ids=[m[0] for m in MALFORMED_MULTIPART])
def test_malformed_multipart_is_a_400_that_says_why(rest, name, content_type, body, words):
    answer = classify_rest(rest, body, content_type=content_type, headers={"x-request-id": "multipart-1"})
    assert (answer.http_status, answer.code) == (400, "INVALID_ARGUMENT"), answer
    assert words in answer.message, answer.message
    assert_clean_error(answer, given_id="multipart-1")


NOT_PROTOBUF = (b"\xff\xff\xff", b"\x12\x05ab")   # an invalid tag; a field longer than the message
BAD_UTF8_IN_FIELD_1 = b"\x0a\x02\xc3\x28"           # field 1 (a string in these two) is not UTF-8


@pytest.mark.parametrize("method, raws", [
    ("/classifier.v1.Classifier/Classify", NOT_PROTOBUF + (BAD_UTF8_IN_FIELD_1,)),
    ("/classifier.v1.Classifier/ClassifyBatch", NOT_PROTOBUF),
    ("/classifier.v1.Classifier/ListModels", NOT_PROTOBUF),
    ("/grpc.health.v1.Health/Check", NOT_PROTOBUF + (BAD_UTF8_IN_FIELD_1,)),
])
def test_undecodable_grpc_messages_are_invalid_argument(gateway, method, raws):
    """Bytes that are not protobuf (or hold invalid UTF-8 in a string field): a client's mistake,
    answered INVALID_ARGUMENT with a request id - not grpcio's UNKNOWN naming a Python exception."""
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for raw in raws:
            with pytest.raises(grpc.RpcError) as err:
                call(raw, timeout=10, metadata=[("x-request-id", "raw-1")])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, err.value)
            assert "not a valid protobuf message" in err.value.details()
            assert dict(err.value.trailing_metadata())["x-request-id"] == "raw-1"


def test_an_undecodable_message_ends_a_stream_with_invalid_argument(gateway, pixels):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stream = channel.stream_stream("/classifier.v1.Classifier/ClassifyStream",
                                       request_serializer=None, response_deserializer=pb.ClassifyResponse.FromString)
        good = pb.ClassifyRequest(image=png(pixels[4])).SerializeToString()
        answers = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in stream(iter([good, b"\xff\xff\xff", good]), timeout=30):
                answers.append(answer)
    assert len(answers) == 1 and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata())["x-request-id"]


def test_health_still_answers_after_all_that(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING and gateway.process.returncode is None


# -- a body that trickles in -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def impatient_gateway(model_server):
    """A gateway whose requests may take one second, body included."""
    gw = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--request-timeout-seconds=1"])
    yield gw
    gw.process.stop()


def test_a_trickled_body_gets_504_within_the_deadline(impatient_gateway):
    """Slowloris: headers promise 1000 bytes, 10 arrive. The gateway answers 504 when the request's
    deadline passes instead of holding the connection (and a worker's memory) forever."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: gw\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000\r\nx-request-id: slow-1\r\n\r\n" + b"\x89PNG\r\n\x1a\n\x00\x00")
        started = time.perf_counter()
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    waited = time.perf_counter() - started
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504"), raw[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "DEADLINE_EXCEEDED" and error["request_id"] == "slow-1"
    assert 0.8 < waited < 3.0, f"answered after {waited:.2f} s, the deadline is 1 s"


# -- memory ----------------------------------------------------------------------------------------------------

def test_memory_stays_flat_over_thousands_of_hostile_requests(gateway, pixels):
    requests = hostile_requests(png(pixels[5]))
    pid = gateway.process.proc.pid
    asyncio.run(send_all(gateway, itertools.islice(requests, 300)))  # warm-up: pools, caches, lazy imports
    before = rss_mib(pid)
    started = time.perf_counter()
    answers = asyncio.run(send_all(gateway, itertools.islice(requests, HOSTILE_REQUESTS)))
    seconds = time.perf_counter() - started
    after = rss_mib(pid)
    codes = collections.Counter(answer.code for _, answer in answers)
    print(f"\n{HOSTILE_REQUESTS} hostile requests in {seconds:.1f} s: {dict(codes)}; gateway RSS {before:.1f} -> {after:.1f} MiB")
    wrong = [(r.transport, r.expect, a.code, a.message) for r, a in answers if a.code != r.expect]
    assert not wrong, wrong[:5]
    assert after - before < 30, f"RSS grew {after - before:.1f} MiB over {HOSTILE_REQUESTS} hostile requests"
    assert gateway.process.returncode is None
    assert httpx.get(f"{gateway.http_url}/healthz", timeout=10).status_code == 200
