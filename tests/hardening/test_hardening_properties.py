"""Property-based tests (hypothesis): whatever bytes arrive, the answer is a client error or a normal
answer - never a 5xx / INTERNAL / UNKNOWN, never a dead process.

* The decoder, in-process (gateway/decode.py is Pillow only): real images of every format Pillow
  writes, bit-flipped, truncated, spliced and padded, plus plain random bytes. Each returns exactly
  the model's input size or raises InvalidImage - nothing else.
* REST parsing, against the running gateway: any model name in the path, any top_k text, any
  content type, bodies that are images, near-images, multipart (well or badly formed) or noise.
* gRPC parsing, against the running gateway: ClassifyRequests with any fields, and raw bytes that
  may not be protobuf at all.

Example counts stay modest (the run takes seconds); the examples are derandomized so CI runs the
same ones every time, and no example database is kept (hypothesis's caches go to the git-ignored
.hypothesis/).
"""

from __future__ import annotations

import io
import time
import urllib.parse
import warnings

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from gateway.decode import DecodeLimits, InputSpec, decode_image, install_pillow_guards
from gateway.errors import InvalidImage
from helpers import metric
from hardening_support import classify_grpc, grpc_answer, rest_answer
from hostile_images import as_animated, as_exif_rotated, as_palette_png_with_alpha, as_sixteen_bit_png, multipart

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)
CLIENT_ERRORS = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}


def _seed_images() -> list[bytes]:
    """Valid images in many formats and modes: the raw material for near-images."""
    def encode(img: Image.Image, fmt: str, **options) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        return buf.getvalue()

    noise = Image.effect_noise((24, 20), 70).convert("L")
    pixels = bytes(range(256)) * 3 + bytes(16)
    return [encode(noise, "PNG"), encode(noise.convert("RGB"), "JPEG", quality=80),
            encode(noise.convert("RGBA"), "WEBP"), encode(noise, "WEBP", lossless=True), encode(noise, "GIF"),
            encode(noise, "BMP"), encode(noise, "TIFF"), encode(noise.convert("CMYK"), "JPEG"),
            encode(noise.convert("LA"), "PNG"), encode(noise.convert("1"), "PNG"),
            encode(noise.convert("RGB"), "JPEG", progressive=True), as_sixteen_bit_png(pixels),
            as_palette_png_with_alpha(pixels), as_exif_rotated(pixels, scale=2), as_animated(pixels, pixels, "PNG")]


SEEDS = _seed_images()


@st.composite
def near_images(draw) -> bytes:
    """A real image with a few edits: bytes flipped, a cut, an insertion, or two images spliced."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


image_bytes = st.one_of(near_images(), st.binary(max_size=2048), st.sampled_from(SEEDS))


# -- the decoder ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=False)
def pillow_guards():
    """The process-wide Pillow limits the gateway installs at start-up, undone afterwards."""
    original = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        install_pillow_guards(1_000_000)
        yield
    Image.MAX_IMAGE_PIXELS = original


@FAST
@given(data=image_bytes, spec=st.sampled_from([InputSpec(28, 28, 1), InputSpec(7, 5, 3)]))
def test_the_decoder_returns_the_model_input_or_invalid_image(pillow_guards, data, spec):
    started = time.perf_counter()
    try:
        pixels = decode_image(data, spec, DecodeLimits(max_pixels=1_000_000))
    except InvalidImage as exc:
        assert exc.message and "Traceback" not in exc.message
    else:
        assert len(pixels) == spec.nbytes
    assert time.perf_counter() - started < 2.0, "one small input took seconds to decode"


# -- REST parsing ---------------------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)
content_types = st.one_of(
    st.sampled_from(["image/png", "image/jpeg", "image/webp", "application/octet-stream", "text/plain",
                     "multipart/form-data", "multipart/form-data; boundary=b0undary", "image/", ""]),
    header_text)


@st.composite
def multipart_bodies(draw) -> bytes:
    parts = draw(st.lists(st.tuples(
        st.sampled_from(['Content-Disposition: form-data; name="image"; filename="a.png"',
                         'Content-Disposition: form-data; name="image"', 'Content-Disposition: form-data',
                         "Content-Type: image/png", ""]),
        st.text(max_size=20)), max_size=4))
    body = multipart(parts)
    return body if draw(st.booleans()) else body[:draw(st.integers(0, len(body)))]


@pytest.fixture(scope="module")
def rest(gateway):
    with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
        yield client


@FAST
@given(model=st.one_of(st.just(""), st.text(max_size=30)),
       top_k=st.one_of(st.none(), st.integers(-5, 2**40), header_text),
       content_type=content_types, body=st.one_of(image_bytes, multipart_bodies()),
       request_id=st.one_of(st.none(), header_text))
def test_rest_answers_any_request_with_a_client_status(rest, model, top_k, content_type, body, request_id):
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}:classify" if model else "/v1/classify"
    headers = {"content-type": content_type} if content_type else {}
    if request_id is not None:
        headers["x-request-id"] = request_id
    started = time.perf_counter()
    response = rest.post(path, content=body, params={} if top_k is None else {"top_k": top_k}, headers=headers)
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text[:300])
    answer = rest_answer(started, response)  # checks the body's request id is the header's
    assert answer.request_id
    if not answer.ok:
        assert answer.message and "Traceback" not in answer.raw


# -- gRPC parsing -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def channel(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield channel


@FAST
@given(model=st.one_of(st.just(""), st.just("fashion"), st.text(max_size=30)), image=image_bytes,
       top_k=st.integers(-2**31, 2**31 - 1))
def test_grpc_answers_any_classify_request_with_a_client_status(channel, model, image, top_k):
    answer = classify_grpc(pb_grpc.ClassifierStub(channel), image, model=model, top_k=top_k)
    assert answer.code in CLIENT_ERRORS, answer
    assert answer.ok or (answer.message and answer.request_id), answer


def _raw_requests():
    valid = [pb.ClassifyRequest(image=seed, top_k=3).SerializeToString() for seed in SEEDS[:3]]
    edited = st.builds(lambda data, at, junk: data[:at] + junk + data[at + len(junk):],
                       st.sampled_from(valid), st.integers(0, 64), st.binary(min_size=1, max_size=8))
    return st.one_of(st.binary(max_size=256), edited)


@FAST
@given(raw=_raw_requests(), method=st.sampled_from(["Classify", "ClassifyBatch", "ListModels"]))
def test_grpc_answers_any_bytes_with_a_client_status(channel, raw, method):
    call = channel.unary_unary(f"/classifier.v1.Classifier/{method}", request_serializer=None,
                               response_deserializer=None)
    started = time.perf_counter()
    try:
        call(raw, timeout=30)
    except grpc.RpcError as exc:
        answer = grpc_answer(started, error=exc)
        assert answer.code in CLIENT_ERRORS, answer
        assert answer.request_id, answer


def test_the_gateway_survived_and_never_answered_a_server_error(gateway):
    assert gateway.process.returncode is None
    assert httpx.get(f"{gateway.http_url}/healthz", timeout=10).status_code == 200
    for status in ("INTERNAL", "UNKNOWN", "500"):  # whole session so far: every request is counted
        assert metric(gateway.http_url, "gateway_requests_total", status=status) == 0, status
