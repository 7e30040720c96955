"""The committed model behind the real gateway knows what it does not know: photographs of other
things are answered "not sure" with reason OUT_OF_DISTRIBUTION, Fashion-MNIST images stay
confident and right, the guard can be switched off per model, and the decisions metric counts
each reason (a drift signal)."""

from __future__ import annotations

import json
import os

import grpc
import httpx
import pytest

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import fashion_test_images, png, samples
from tools import stack
from training.datasets.fashion_mnist import FILES, LABELS
from training.datasets.idx import read_idx
from training.oodset import photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def committed_stack(committed_model):
    server = stack.start_model_server(model_base_path=committed_model.parent)
    gateways = []
    try:
        gateways.append(stack.start_gateway(backend=server.grpc_target))
        gateways.append(stack.start_gateway(backend=server.grpc_target, env={
            **os.environ, "GATEWAY_MODELS": json.dumps({"fashion": {"thresholds": {"ood": {"enabled": False}}}})}))
        yield gateways
    finally:
        for gw in gateways:
            gw.process.stop()
        server.process.stop()


def classify_all(gw: stack.Gateway, images: list[bytes]) -> list[pb.ClassifyResponse]:
    answers = []
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for start in range(0, len(images), 64):
            chunk = [pb.ClassifyRequest(image=image) for image in images[start:start + 64]]
            answers += stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=chunk), timeout=120).responses
    assert all(not a.HasField("error") for a in answers), [a.error.message for a in answers if a.HasField("error")]
    return answers


def test_photos_of_other_things_are_not_sure_and_say_why(committed_stack):
    guarded, unguarded = committed_stack
    shots = photos()
    answers = classify_all(guarded, [p.data for p in shots])
    reasons = [pb.ClassifyResponse.Reason.Name(a.reason) for a in answers]
    print(f"\n{reasons.count('OUT_OF_DISTRIBUTION')} of {len(shots)} photos out of distribution")
    assert [a.label for a in answers] == ["not sure"] * len(shots)
    assert set(reasons) == {"OUT_OF_DISTRIBUTION"}
    rest = httpx.post(f"{guarded.http_url}/v1/classify", content=shots[0].data,
                      headers={"content-type": "image/png" if shots[0].data[:4] == b"\x89PNG" else "image/jpeg"},
                      timeout=60).json()
    assert (rest["label"], rest["confident"], rest["reason"]) == ("not sure", False, "OUT_OF_DISTRIBUTION")
    counted = sum(v for labels, v in samples(guarded.http_url, "gateway_decisions_total")
                  if labels["reason"] == "OUT_OF_DISTRIBUTION")
    assert counted >= len(shots)
    # Switched off in the settings, the same photos get the (wrong, confident) answers of the softmax.
    loose = classify_all(unguarded, [p.data for p in shots])
    assert not any(pb.ClassifyResponse.Reason.Name(a.reason) == "OUT_OF_DISTRIBUTION" for a in loose)
    assert sum(a.confident for a in loose) >= len(shots) // 2


def test_fashion_images_stay_confident_and_right(committed_stack, fashion_data):
    guarded, _ = committed_stack
    count = 1000
    images = [png(p) for p in fashion_test_images(fashion_data, count)]
    truth = [LABELS[int(c)] for c in read_idx(fashion_data / f"{FILES['test_labels']}.gz")[:count]]
    answers = classify_all(guarded, images)
    confident = [(a.label, t) for a, t in zip(answers, truth) if a.confident]
    coverage, accuracy = len(confident) / count, sum(a == t for a, t in confident) / len(confident)
    print(f"\nfirst {count} test images: confident on {coverage:.1%}, right on {accuracy:.2%} of those")
    assert coverage >= 0.93 and accuracy >= 0.96
