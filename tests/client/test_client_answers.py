"""imgclass-client against the gateway's per-item answers and error details, over gRPC: one bad
image among eight in a batch and a stream, reasons a program can act on, a retry hint it can
honour, a stream that answers each image as it is sent, and the reason, id and state fields."""

from __future__ import annotations

import threading

import pytest

from imgclass_client import ClassifierClient, InvalidImage, Overloaded, TooLarge
from imgclass_client.retry import RetryPolicy
from helpers import EXAMPLES, example
from tools import stack


@pytest.fixture(scope="module")
def client(served):
    with ClassifierClient(served.gateway.grpc_target) as grpc_client:
        yield grpc_client


def eight_with_one_bad() -> dict:
    good = [p for p in EXAMPLES if p.suffix == ".png"]
    images = {f"img-{i}": good[i % len(good)] for i in range(8)}
    images["img-3"] = b"this is not an image"
    return images


def test_one_bad_image_among_eight_fails_alone_in_batch_and_stream(client):
    images = eight_with_one_bad()
    for results in (client.classify_batch(images), list(client.stream(images))):
        assert [r.id for r in results] == list(images) and [r.index for r in results] == list(range(8))
        bad = results[3]
        assert isinstance(bad.error, InvalidImage) and bad.error.reason == "INVALID_IMAGE" and bad.error.request_id
        assert all(r.ok and r.unwrap().reason for i, r in enumerate(results) if i != 3)


def test_reasons_tell_never_retry_from_retry_later(served, client):
    with pytest.raises(TooLarge) as too_many:
        client.classify_batch([example("bag.png")] * 65)
    assert too_many.value.reason == "TOO_MANY_IMAGES" and too_many.value.retry_after is None
    # A gateway with room for one waiting image: a burst from one caller is refused with a hint.
    gw = stack.start_gateway(backend=served.server.grpc_target,
                             extra_args=["--max-queue=1", "--max-pending-decodes=1", "--max-concurrent-batches=1"])
    try:
        refusals: list[Overloaded] = []
        with ClassifierClient(gw.grpc_target, retry=RetryPolicy(max_attempts=1)) as impatient:
            def one() -> None:
                try:
                    impatient.classify(example("bag.png"))
                except Overloaded as exc:
                    refusals.append(exc)

            threads = [threading.Thread(target=one) for _ in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        gw.process.stop()
    assert refusals, "24 callers at once were never refused by a queue of one"
    assert all(r.reason == "OVERLOADED" and r.retry_after and r.retry_after > 0 for r in refusals)


def test_a_stream_answers_each_image_before_the_next_is_sent(client):
    answered = threading.Event()
    sent: list[str] = []

    def images():
        for name in ("bag.png", "trouser.png", "ankle-boot.png"):
            sent.append(name)
            yield example(name)
            assert answered.wait(10), f"no answer for {name} before the next image"
            answered.clear()

    results = []
    for result in client.stream(images()):
        results.append(result)
        answered.set()
    assert len(results) == 3 and [r.unwrap().label for r in results] == ["Bag", "Trouser", "Ankle boot"]


def test_answers_carry_reason_id_and_models_their_state(client):
    (result,) = client.classify_batch({"my-id": example("bag.png")})
    assert result.id == "my-id" and result.unwrap().reason == "CONFIDENT"
    (model,) = client.list_models()
    assert model.state == "AVAILABLE" and model.available
