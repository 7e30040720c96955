"""The gateway's errors and the ONE table that maps them to gRPC codes, HTTP statuses and reasons.

Code anywhere raises a `GatewayError` carrying a kind; the gRPC servicer and the REST routes both
translate it through `TABLE`, so the two transports cannot drift apart. A kind's name is the
`reason` a program branches on (google.rpc.ErrorInfo over gRPC, `reason` in REST error bodies; the
list is documented in protos/classifier/v1/classifier.proto), never the message. An error that a
retry can cure carries `retry_after` (google.rpc.RetryInfo, REST `retry-after`). Messages are
written for the client: they never carry stack traces, internal addresses or backend error
details (those go to the log).
"""

from __future__ import annotations

import enum
import math

import grpc

DOMAIN = "classifier.v1"  # google.rpc.ErrorInfo.domain


class ErrorKind(enum.Enum):
    INVALID_IMAGE = "INVALID_IMAGE"          # not an image, unsupported format, truncated, bomb
    INVALID_ARGUMENT = "INVALID_ARGUMENT"    # a bad parameter (top_k, both version and label, ...)
    TOO_MANY_IMAGES = "TOO_MANY_IMAGES"      # more images in one batch than the limit
    TOO_LARGE = "TOO_LARGE"                  # message or body over the limit
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"      # unknown model
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"  # no model server serves that version, or no such label
    OVERLOADED = "OVERLOADED"                # a bounded queue is full: retry later
    CIRCUIT_OPEN = "CIRCUIT_OPEN"            # every model server endpoint is ejected: retry later
    UNAVAILABLE = "UNAVAILABLE"              # model server unreachable, model not loaded (yet)
    SHUTTING_DOWN = "SHUTTING_DOWN"          # this gateway replica is draining: retry (elsewhere) at once
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"      # missing or wrong API key (when auth is on)
    CLIENT_GONE = "CLIENT_GONE"              # the client hung up: its work is cancelled, nobody reads the answer
    INTERNAL = "INTERNAL"                    # a bug: logged with its traceback, never shown

    @property
    def reason(self) -> str:
        return self.value


# kind -> (gRPC code, HTTP status, can a retry succeed?)
TABLE: dict[ErrorKind, tuple[grpc.StatusCode, int, bool]] = {
    ErrorKind.INVALID_IMAGE: (grpc.StatusCode.INVALID_ARGUMENT, 400, False),
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400, False),
    ErrorKind.TOO_MANY_IMAGES: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413, False),
    ErrorKind.TOO_LARGE: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413, False),
    ErrorKind.MODEL_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404, False),
    ErrorKind.VERSION_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404, False),
    ErrorKind.OVERLOADED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, True),
    ErrorKind.CIRCUIT_OPEN: (grpc.StatusCode.UNAVAILABLE, 503, True),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503, True),
    ErrorKind.SHUTTING_DOWN: (grpc.StatusCode.UNAVAILABLE, 503, True),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504, False),
    ErrorKind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401, False),
    # Never seen by a client (it left); 499 as nginx logs it, for the gateway's own log and metrics.
    ErrorKind.CLIENT_GONE: (grpc.StatusCode.CANCELLED, 499, False),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, 500, False),
}

# When a retryable error says nothing better: the earliest retry worth making, in seconds.
DEFAULT_RETRY_AFTER = {ErrorKind.OVERLOADED: 0.1, ErrorKind.UNAVAILABLE: 1.0, ErrorKind.CIRCUIT_OPEN: 1.0,
                       ErrorKind.SHUTTING_DOWN: 0.0}


class GatewayError(Exception):
    """An error with a client-facing message; `kind` picks the status on both transports."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None, *, retry_after: float | None = None,
                 metadata: dict[str, str] | None = None):
        """`retry_after`: seconds until a retry may succeed (retryable kinds only); `metadata`:
        ErrorInfo metadata such as the model or the limit."""
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER.get(self.kind)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return TABLE[self.kind][0]

    @property
    def http_status(self) -> int:
        return TABLE[self.kind][1]

    @property
    def retryable(self) -> bool:
        return TABLE[self.kind][2]

    @property
    def code_name(self) -> str:
        """The gRPC status name, e.g. "INVALID_ARGUMENT": the `code` field of REST error bodies."""
        return self.grpc_code.name

    @property
    def reason(self) -> str:
        return self.kind.reason

    def retry_after_header(self) -> str | None:
        """REST `retry-after`: `retry_after` in whole seconds, rounded up (the header has no
        fractions): 1 for OVERLOADED's 0.1 s, 0 - retry at once - for SHUTTING_DOWN, as RetryInfo says."""
        if not self.retryable or self.retry_after is None:
            return None
        return str(max(0, math.ceil(self.retry_after)))

    def with_message(self, message: str) -> "GatewayError":
        """The same error (kind, retry hint, metadata) with another message."""
        return GatewayError(message, self.kind, retry_after=self.retry_after, metadata=self.metadata)

    def to_body(self, request_id: str) -> dict:
        """The REST error body: {"error": {"code", "reason", "message", "request_id"[, "retry_after"]}}."""
        error = {"code": self.code_name, "reason": self.reason, "message": self.message, "request_id": request_id}
        if self.retryable and self.retry_after is not None:
            error["retry_after"] = round(self.retry_after, 3)
        if self.metadata:
            error["metadata"] = dict(self.metadata)
        return {"error": error}


class InvalidImage(GatewayError):
    kind = ErrorKind.INVALID_IMAGE


class InvalidArgument(GatewayError):
    kind = ErrorKind.INVALID_ARGUMENT


class TooManyImages(GatewayError):
    kind = ErrorKind.TOO_MANY_IMAGES


class ModelNotFound(GatewayError):
    kind = ErrorKind.MODEL_NOT_FOUND


class VersionNotFound(GatewayError):
    kind = ErrorKind.VERSION_NOT_FOUND


class TooLarge(GatewayError):
    kind = ErrorKind.TOO_LARGE


class Overloaded(GatewayError):
    kind = ErrorKind.OVERLOADED


class CircuitOpen(GatewayError):
    kind = ErrorKind.CIRCUIT_OPEN


class DeadlineExceeded(GatewayError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Unavailable(GatewayError):
    kind = ErrorKind.UNAVAILABLE


class ShuttingDown(GatewayError):
    kind = ErrorKind.SHUTTING_DOWN


class Unauthenticated(GatewayError):
    kind = ErrorKind.UNAUTHENTICATED


class ClientGone(GatewayError):
    kind = ErrorKind.CLIENT_GONE


class InternalError(GatewayError):
    """Stands in for an unexpected exception at the transport boundary; the original is logged."""

    kind = ErrorKind.INTERNAL

    def __init__(self, message: str = "internal error; the request id is in the gateway's log"):
        super().__init__(message)


def as_gateway_error(exc: BaseException) -> GatewayError:
    """The error a client sees for any exception (unexpected ones become a bland INTERNAL)."""
    return exc if isinstance(exc, GatewayError) else InternalError()
