"""gRPC and REST give the same answer to the same bad request, over the wire (the session's gateway).

One image: the same status, reason and (where the core decides) message on both. A batch: gRPC
answers every entry with the error, REST - whose model, top_k, version and version_label belong to
the whole call - fails the call once with that error (protos/classifier/v1/classifier.proto,
ClassifyBatch).
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc

LONG_LABEL = "x" * 200
# (ClassifyRequest fields, the same as a REST query), code, reason, and whether REST says the same words
# (top_k's range is checked by REST's query parsing, with its own message).
BAD = [
    ({"version": -1}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", True),
    ({"version_label": LONG_LABEL}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", True),
    ({"version": 1, "version_label": "stable"}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", True),
    ({"version_label": "nope"}, "NOT_FOUND", "VERSION_NOT_FOUND", True),
    ({"version": 99}, "NOT_FOUND", "VERSION_NOT_FOUND", True),
    ({"top_k": -3}, "INVALID_ARGUMENT", "INVALID_ARGUMENT", False),
]
IDS = ["version=-1", "long-label", "version-and-label", "unknown-label", "unserved-version", "top_k=-3"]


@pytest.fixture(scope="module")
def stub(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield pb_grpc.ClassifierStub(channel)


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError(f"no ErrorInfo in {status}")


def rest_error(response: httpx.Response) -> tuple[str, str, str]:
    error = response.json()["error"]
    return error["code"], error["reason"], error["message"]


@pytest.mark.parametrize("fields, code, reason, same_words", BAD, ids=IDS)
def test_one_image(gateway, stub, images, fields, code, reason, same_words):
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(image=images[0], **fields), timeout=30)
    status = rpc_status.from_call(err.value)
    over_grpc = (err.value.code().name, reason_of(status), status.message)

    response = httpx.post(f"{gateway.http_url}/v1/classify", params=fields, content=images[0],
                          headers={"content-type": "image/png"}, timeout=30)
    over_rest = rest_error(response)
    assert response.status_code == (404 if code == "NOT_FOUND" else 400)
    assert over_grpc[:2] == over_rest[:2] == (code, reason)
    if same_words:
        assert over_grpc[2] == over_rest[2]


@pytest.mark.parametrize("fields, code, reason, same_words", BAD, ids=IDS)
def test_a_batch(gateway, stub, images, fields, code, reason, same_words):
    answers = stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=[
        pb.ClassifyRequest(image=image, id=name, **fields) for name, image in (("a", images[0]), ("b", images[1]))]),
        timeout=30).responses
    per_item = [(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == a.error.code)).name,
                 reason_of(a.error), a.error.message) for a in answers]
    assert [a.id for a in answers] == ["a", "b"] and per_item[0] == per_item[1]

    files = [("image", (name, image, "image/png")) for name, image in (("a", images[0]), ("b", images[1]))]
    response = httpx.post(f"{gateway.http_url}/v1/classify:batch", params=fields, files=files, timeout=30)
    assert response.status_code == (404 if code == "NOT_FOUND" else 400), response.text
    over_rest = rest_error(response)
    assert per_item[0][:2] == over_rest[:2] == (code, reason)
    if same_words:
        assert per_item[0][2] == over_rest[2]


def test_a_rest_batch_counts_only_its_image_parts(gateway, images):
    """One image beside 64 other files is one image (the limit is 64 images); 65 images are too many."""
    url = f"{gateway.http_url}/v1/classify:batch"
    others = [("notes", (f"n{i}.txt", b"not an image", "text/plain")) for i in range(64)]
    one = httpx.post(url, files=[("image", ("a.png", images[0], "image/png")), *others], timeout=30)
    assert one.status_code == 200, one.text
    assert [a["id"] for a in one.json()["responses"]] == ["a.png"]

    many = httpx.post(url, files=[("image", ("a.png", images[0], "image/png"))] * 65, timeout=30)
    assert (many.status_code, rest_error(many)) == (
        413, ("RESOURCE_EXHAUSTED", "TOO_MANY_IMAGES", "65 images in one request; the limit is 64"))
