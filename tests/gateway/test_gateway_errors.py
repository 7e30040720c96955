"""The retry hint of an error, the same on both transports (gateway/errors.py, gateway/status.py,
gateway/rest_middleware.py's error_response): in-process, the pure units with no server."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2

from gateway.errors import InvalidImage, Overloaded, ShuttingDown, Unavailable
from gateway.rest_middleware import error_response
from gateway.status import error_to_status

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast


def retry_info_seconds(err) -> float | None:
    for detail in error_to_status(err, "r1").details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


@pytest.mark.parametrize("err, header, seconds", [
    (ShuttingDown("draining"), "0", 0.0),                    # retry at once, on every transport
    (Overloaded("full", retry_after=0.1), "1", 0.1),          # the header has no fractions: rounded up
    (Overloaded("full", retry_after=2.0), "2", 2.0),
    (Unavailable("down"), "1", 1.0),
    (InvalidImage("no"), None, None),                         # not retryable: no hint anywhere
])
def test_the_retry_hint_is_the_same_in_the_header_the_body_and_retry_info(err, header, seconds):
    response = error_response(err, "r1")
    assert response.headers.get("retry-after") == header
    assert err.to_body("r1")["error"].get("retry_after") == seconds
    over_grpc = retry_info_seconds(err)
    assert over_grpc is None if seconds is None else over_grpc == pytest.approx(seconds)
