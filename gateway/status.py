"""Errors as google.rpc statuses: what gRPC callers (and per-item answers) receive.

`error_to_status` gives the google.rpc.Status of a GatewayError - its code, message, an ErrorInfo
(reason, domain "classifier.v1", metadata with the request id) and, when a retry can succeed, a
RetryInfo; `error_trailers` the trailing metadata a failed call ends with: that status as
`grpc-status-details-bin` (what grpcio-status and every gRPC library read) and the request id.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import DOMAIN, GatewayError
from gateway.logs import REQUEST_ID_HEADER


def error_to_status(err: GatewayError, request_id: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN,
                                       metadata={**err.metadata, "request_id": request_id})
    details = [_packed(info)]
    if err.retryable and err.retry_after is not None:
        seconds = max(0.0, err.retry_after)
        whole = int(seconds)
        delay = duration_pb2.Duration(seconds=whole, nanos=min(999_999_999, int(round((seconds - whole) * 1e9))))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=err.grpc_code.value[0], message=err.message, details=details)


def error_trailers(err: GatewayError, request_id: str) -> tuple[tuple[str, str | bytes], ...]:
    status = rpc_status.to_status(error_to_status(err, request_id))
    return (*status.trailing_metadata, (REQUEST_ID_HEADER, request_id))


def _packed(message) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped
