"""imgclass-client's pure parts in-process, and the classifier.v1 proto's checks.

What the gateway will put on the wire (google.rpc details, per-item errors, REST reasons and
retry-after) read into typed errors; the retry policy and budget; the generated stubs' import
path; `buf breaking` catching a removed field.
"""

from __future__ import annotations

import email.utils
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from imgclass_client import InvalidImage, NotFound, Overloaded, RetryPolicy, TooLarge, Unavailable
from imgclass_client._wire import item_result
from imgclass_client.errors import from_rest_body, from_rpc_error, parse_retry_after
from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.retry import Deadline, Retrier, RetryBudget
from tools import protos

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

ROOT = Path(__file__).resolve().parents[2]


def packed(*messages) -> list[any_pb2.Any]:
    details = []
    for message in messages:
        detail = any_pb2.Any()
        detail.Pack(message)
        details.append(detail)
    return details


def rich_status(code: int, message: str, reason: str, retry_seconds: float | None = None) -> status_pb2.Status:
    messages = [error_details_pb2.ErrorInfo(reason=reason, domain="classifier.v1", metadata={"model": "fashion"}),
                error_details_pb2.RequestInfo(request_id="rid-7")]
    if retry_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_seconds * 1e9))
        messages.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return status_pb2.Status(code=code, message=message, details=packed(*messages))


def test_grpc_error_details_decide_the_type_and_the_retry_hint():
    status = rich_status(8, "queue full", "OVERLOADED", retry_seconds=1.5)
    error = from_rpc_error("RESOURCE_EXHAUSTED", "queue full",
                           [("x-request-id", "rid-trailer"), ("grpc-status-details-bin", status.SerializeToString())])
    assert isinstance(error, Overloaded) and error.retryable
    assert (error.reason, error.retry_after, error.request_id, error.metadata) == \
        ("OVERLOADED", 1.5, "rid-7", {"model": "fashion"})
    # The same code with another reason is never retried: the reason decides, not the message.
    too_many = from_rpc_error("RESOURCE_EXHAUSTED", "65 images; retry later", [
        ("grpc-status-details-bin", rich_status(8, "65 images; retry later", "TOO_MANY_IMAGES").SerializeToString())])
    assert isinstance(too_many, TooLarge) and not too_many.retryable
    # No details (an older gateway): the code alone, the request id from the metadata.
    legacy = from_rpc_error("NOT_FOUND", "unknown model", [("x-request-id", "rid-9")])
    assert isinstance(legacy, NotFound) and (legacy.reason, legacy.request_id) == ("", "rid-9")
    assert isinstance(from_rpc_error("CANCELLED", "", []), Unavailable)  # a gateway that stopped mid-call


def test_a_failed_item_is_its_own_typed_error():
    failed = pb.ClassifyResponse(index=3, id="cat.jpg", error=rich_status(3, "truncated", "INVALID_IMAGE"))
    result = item_result(3, "", failed, "rid-batch")
    assert not result.ok and result.id == "cat.jpg" and isinstance(result.error, InvalidImage)
    with pytest.raises(InvalidImage):
        result.unwrap()
    good = pb.ClassifyResponse(model="fashion", model_version=2, label="Bag", confident=True,
                               reason=pb.ClassifyResponse.CONFIDENT, id="bag.png", index=4,
                               predictions=[pb.Prediction(label="Bag", score=0.9)])
    answer = item_result(4, "", good, "rid-batch").unwrap()
    assert (answer.label, answer.reason, answer.id, answer.request_id) == ("Bag", "CONFIDENT", "bag.png", "rid-batch")
    assert answer.to_dict() == {"model": "fashion", "model_version": 2, "label": "Bag", "confident": True,
                                "reason": "CONFIDENT", "predictions": [{"label": "Bag", "score": pytest.approx(0.9)}]}


def test_rest_errors_read_reason_and_retry_after():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    overloaded = from_rest_body({"error": {"code": "RESOURCE_EXHAUSTED", "reason": "OVERLOADED", "message": "busy",
                                           "request_id": "r1"}}, http_status=429, retry_after=parse_retry_after(when))
    assert isinstance(overloaded, Overloaded) and 25 < overloaded.retry_after <= 30 and overloaded.request_id == "r1"
    assert parse_retry_after("0.25") == 0.25 and parse_retry_after("soon") is None
    assert isinstance(from_rest_body({"error": {"code": "RESOURCE_EXHAUSTED", "message": "big"}}, http_status=413),
                      TooLarge)
    proxy = from_rest_body({"error": {"message": "<html>bad gateway</html>"}}, http_status=502)
    assert isinstance(proxy, Unavailable) and proxy.code == "UNAVAILABLE"


def test_retries_honour_the_hint_the_deadline_and_the_budget():
    policy = RetryPolicy(budget_percent=0, budget_min_per_second=10)
    retrier = Retrier(policy, seed=1)
    hinted = Overloaded("busy", code="RESOURCE_EXHAUSTED", retry_after=0.5)
    assert 0.5 <= retrier.next_delay(hinted, 1, Deadline(10)) <= 0.75
    with pytest.raises(Overloaded):  # the hint is past the deadline: give up now, not at the deadline
        retrier.next_delay(hinted, 1, Deadline(0.3))
    with pytest.raises(Overloaded):  # attempts used up
        retrier.next_delay(hinted, policy.max_attempts, Deadline(10))
    with pytest.raises(InvalidImage):  # never retried
        retrier.next_delay(InvalidImage("bad", code="INVALID_ARGUMENT"), 1, Deadline(10))
    backoffs = [policy.delay(n, None, random.Random(0)) for n in (1, 2, 3, 6)]
    assert 0.1 <= backoffs[0] < backoffs[1] < backoffs[2] and backoffs[3] <= policy.max_backoff * 1.5

    for wrong in (dict(max_attempts=0), dict(max_retry_after=-1), dict(multiplier=0.5), dict(jitter=-0.1)):
        with pytest.raises(ValueError):
            RetryPolicy(**wrong)

    budget = RetryBudget(policy)  # 10 tokens, refilled at 10 per second, no share of calls
    waits = [budget.reserve(within=None) for _ in range(13)]
    assert waits[:10] == [0.0] * 10 and 0.05 < waits[10] < waits[11] < waits[12] <= 0.31
    assert budget.reserve(within=0.1) is None  # the next share comes too late for this caller


def test_stubs_import_by_package_whatever_else_is_called_classifier(tmp_path):
    """Package-qualified imports: a `classifier` package earlier on sys.path changes nothing, and
    the gateway, which uses these very stubs, loads in the same process."""
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "__init__.py").write_text("raise ImportError('the wrong classifier package')\n")
    check = ("import sys; sys.path.insert(0, sys.argv[1]); import imgclass_client; "
             "from imgclass_client import sync, aio, rest; "
             # The clients never import the generated grpc module (it needs the grpcio that wrote it).
             "assert 'imgclass_client.proto.classifier.v1.classifier_pb2_grpc' not in sys.modules; "
             "from imgclass_client.proto.classifier.v1 import classifier_pb2, classifier_pb2_grpc as g; "
             "assert classifier_pb2.DESCRIPTOR.name == 'classifier/v1/classifier.proto'; "
             "assert g.ClassifierStub; sys.path.remove(sys.argv[1]); "
             "import gateway.grpc_service as service; assert service.pb is classifier_pb2")
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr


def test_buf_breaking_fails_on_a_removed_field(tmp_path):
    mutated = tmp_path / "protos"
    shutil.copytree(protos.PROTOS / "classifier", mutated / "classifier")
    source = mutated / protos.API_PROTO
    text = source.read_text()
    assert "  bool confident = 4;\n" in text
    source.write_text(text.replace("  bool confident = 4;\n", ""))
    problems = protos.check_api(mutated)
    assert len(problems) == 1 and problems[0].startswith("buf breaking"), problems
    assert 'Previously present field "4" with name "confident" on message "ClassifyResponse" was deleted' \
        in problems[0]
    source.write_text(text)  # and the proto as committed passes both checks
    assert protos.check_api(mutated) == []
