"""The errors the client raises (or puts in a per-item result), and how they are read off the wire.

Every error is a `ClassifierError` carrying `code` (the gRPC status name), `reason` (the gateway's
google.rpc.ErrorInfo reason, e.g. "OVERLOADED"; empty when the gateway sent none), `message`,
`request_id`, `retry_after` (seconds, from google.rpc.RetryInfo or REST's retry-after header) and
`http_status` (REST only). The subclass says what to do:

    InvalidArgument (InvalidImage)  never retry: fix the request
    TooLarge                        never retry: too many images, or too many bytes
    NotFound                        never retry: unknown model, version or label
    Unauthenticated                 never retry: missing or wrong API key
    Overloaded                      retried by the client (honouring retry_after); raised when
                                    retries are used up
    Unavailable                     retried likewise (also CANCELLED by a gateway that stopped)
    DeadlineExceeded                the call's deadline passed (retries included)
    ImageReadError                  the client could not read an image file (never sent)
    ClassifierError, code CANCELLED the client was closed (`closed()`); never retried

The gateway puts ErrorInfo / RetryInfo in the `grpc-status-details-bin` trailer (gRPC), in each
failed item's google.rpc.Status (ClassifyBatch, ClassifyStream), and `reason` in REST error
bodies. Without them (an older gateway, a proxy) the class comes from the status code alone.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "classifier.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"

Metadata = Sequence[Tuple[str, object]]


class ClassifierError(Exception):
    """An error answered by the gateway (or met on the way to it)."""

    retryable = False

    def __init__(self, message: str, *, code: str = "UNKNOWN", reason: str = "", request_id: str = "",
                 retry_after: Optional[float] = None, http_status: Optional[int] = None,
                 metadata: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.request_id = request_id
        self.retry_after = retry_after
        self.http_status = http_status
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        what = self.reason or self.code
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{what}: {self.message}{rid}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r}, message={self.message!r}, "
                f"request_id={self.request_id!r}, retry_after={self.retry_after!r})")


class InvalidArgument(ClassifierError):
    """The request is wrong (a bad field, or a bad image): sending it again gives the same answer."""


class InvalidImage(InvalidArgument):
    """Not an image, an unsupported format, truncated, zero-size or too many pixels."""


class TooLarge(ClassifierError):
    """Too many images in one batch, or a message/body over the gateway's size limit."""


class NotFound(ClassifierError):
    """The gateway does not front the model, or no model server serves the version or label."""


class Unauthenticated(ClassifierError):
    """Missing or wrong API key."""


class Overloaded(ClassifierError):
    """The gateway's queue is full: retry after `retry_after` seconds (the client does)."""

    retryable = True


class Unavailable(ClassifierError):
    """The gateway or its model server cannot answer now (restarting, circuit open, model loading)."""

    retryable = True


class DeadlineExceeded(ClassifierError):
    """The call's deadline passed."""


class ImageReadError(ClassifierError):
    """The client could not read an image file; nothing was sent."""


_BY_REASON = {
    "INVALID_IMAGE": InvalidImage, "INVALID_ARGUMENT": InvalidArgument,
    "TOO_MANY_IMAGES": TooLarge, "TOO_LARGE": TooLarge,
    "MODEL_NOT_FOUND": NotFound, "VERSION_NOT_FOUND": NotFound,
    "OVERLOADED": Overloaded,
    "CIRCUIT_OPEN": Unavailable, "UNAVAILABLE": Unavailable, "SHUTTING_DOWN": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded, "UNAUTHENTICATED": Unauthenticated,
}
_BY_CODE = {
    "INVALID_ARGUMENT": InvalidArgument, "NOT_FOUND": NotFound, "UNAUTHENTICATED": Unauthenticated,
    "UNAVAILABLE": Unavailable, "DEADLINE_EXCEEDED": DeadlineExceeded,
    # The client cancels a call it still waits for only when it is closed (then it raises closed()
    # instead), so CANCELLED comes from the other side: a gateway that stopped with the call in
    # flight. Classifying an image again is harmless.
    "CANCELLED": Unavailable,
}
_BY_HTTP_STATUS = {
    400: InvalidArgument, 401: Unauthenticated, 404: NotFound, 413: TooLarge, 429: Overloaded,
    502: Unavailable, 503: Unavailable, 504: DeadlineExceeded,
}
_CODE_OF_HTTP_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
# google.rpc.Code numbers, as per-item google.rpc.Status messages carry them.
_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


def closed() -> ClassifierError:
    """What a call of a closed client raises (and what its in-flight calls end with): never retried."""
    return ClassifierError("the client is closed", code="CANCELLED")


def make_error(code: str, message: str, *, reason: str = "", request_id: str = "",
               retry_after: Optional[float] = None, http_status: Optional[int] = None,
               metadata: Optional[Mapping[str, str]] = None) -> ClassifierError:
    """The typed error for what the gateway said: by reason, else by HTTP status, else by code."""
    cls = _BY_REASON.get(reason)
    if cls is None and http_status is not None:
        cls = _BY_HTTP_STATUS.get(http_status)
    if cls is None:
        cls = _BY_CODE.get(code)
    if cls is None and code == "RESOURCE_EXHAUSTED":
        # No reason and no HTTP status: a gateway without error details, over gRPC. Its overload
        # messages end "retry later"; its size refusals do not.
        cls = Overloaded if "retry" in message.lower() else TooLarge
    return (cls or ClassifierError)(message, code=code, reason=reason, request_id=request_id,
                                    retry_after=retry_after, http_status=http_status, metadata=metadata)


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def from_status(status: status_pb2.Status, request_id: str = "") -> ClassifierError:
    """The error in a google.rpc.Status: its code, message and ErrorInfo / RetryInfo / RequestInfo."""
    reason, retry_after, metadata = "", None, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = _seconds(retry.retry_delay)
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            request_id = info.request_id or request_id
    return make_error(_CODE_NAMES.get(status.code, "UNKNOWN"), status.message, reason=reason,
                      request_id=request_id, retry_after=retry_after, metadata=metadata)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def from_rpc_error(code_name: str, details: str, trailing: Metadata, initial: Metadata = ()) -> ClassifierError:
    """The error of a failed gRPC call, from its status and metadata (both grpc APIs give these)."""
    request_id, status_bytes = "", None
    for key, value in [*initial, *trailing]:
        if key == REQUEST_ID_KEY:
            request_id = _text(value)
        elif key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status_bytes = value
    if status_bytes is not None:
        try:
            status = status_pb2.Status.FromString(status_bytes)
        except Exception:  # a proxy's or another server's bytes: fall back to the code  # noqa: BLE001
            status = None
        if status is not None and status.code != 0:
            return from_status(status, request_id)
    return make_error(code_name, details or "", request_id=request_id)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """REST's retry-after header: seconds (possibly fractional) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def from_rest_body(body: object, *, http_status: Optional[int], request_id: str = "",
                   retry_after: Optional[float] = None) -> ClassifierError:
    """The error in a REST error object: {"code", "reason"?, "message", "request_id", "retry_after"?}.

    `code` may be the gRPC status name (the gateway's error bodies) or its number (google.rpc.Status
    as JSON); an unreadable body leaves the HTTP status to decide."""
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    if isinstance(code, int):
        code = _CODE_NAMES.get(code, "UNKNOWN")
    if not isinstance(code, str) or not code:
        code = _CODE_OF_HTTP_STATUS.get(http_status or 0, "UNKNOWN")
    reason = str(error.get("reason") or "")
    hint = error.get("retry_after_seconds", error.get("retry_after"))
    if isinstance(hint, (int, float)) and retry_after is None:
        retry_after = float(hint)
    for detail in error.get("details") or ():  # google.rpc.Status as JSON
        if isinstance(detail, dict):
            reason = reason or str(detail.get("reason") or "")
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s") and retry_after is None:
                try:
                    retry_after = float(delay[:-1])
                except ValueError:
                    pass
    message = str(error.get("message") or f"HTTP {http_status}")
    return make_error(code, message, reason=reason, request_id=str(error.get("request_id") or request_id),
                      retry_after=retry_after, http_status=http_status,
                      metadata=error.get("metadata") if isinstance(error.get("metadata"), dict) else None)
