"""The gateway's errors and the ONE table that maps them to gRPC codes and HTTP statuses (CONTRACT §6).

Code anywhere raises a `GatewayError` carrying a kind; the gRPC servicer and the REST routes both
translate it through `TABLE`, so the two transports cannot drift apart. Messages are written for
the client: they never carry stack traces, internal addresses or backend error details (those go to
the log).
"""

from __future__ import annotations

import enum

import grpc


class ErrorKind(enum.Enum):
    INVALID_IMAGE = "invalid_image"          # not an image, unsupported format, truncated, bomb
    INVALID_ARGUMENT = "invalid_argument"    # a bad parameter (top_k, missing field, ...)
    NOT_FOUND = "not_found"                  # unknown model
    TOO_LARGE = "too_large"                  # message or body over the limit
    OVERLOADED = "overloaded"                # bounded queue full
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"              # model server down, model not loaded, circuit open
    UNAUTHENTICATED = "unauthenticated"      # missing or wrong API key (when auth is on)
    CLIENT_GONE = "client_gone"              # the client hung up: its work is cancelled, nobody reads the answer
    INTERNAL = "internal"                    # a bug: logged with its traceback, never shown


TABLE: dict[ErrorKind, tuple[grpc.StatusCode, int]] = {
    ErrorKind.INVALID_IMAGE: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorKind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    ErrorKind.TOO_LARGE: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    ErrorKind.OVERLOADED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    ErrorKind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
    # Never seen by a client (it left); 499 as nginx logs it, for the gateway's own log and metrics.
    ErrorKind.CLIENT_GONE: (grpc.StatusCode.CANCELLED, 499),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
}


class GatewayError(Exception):
    """An error with a client-facing message; `kind` picks the status on both transports."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None):
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return TABLE[self.kind][0]

    @property
    def http_status(self) -> int:
        return TABLE[self.kind][1]

    @property
    def code_name(self) -> str:
        """The gRPC status name, e.g. "INVALID_ARGUMENT": the `code` field of REST error bodies."""
        return self.grpc_code.name

    def to_body(self, request_id: str) -> dict:
        """The REST error body: {"error": {"code", "message", "request_id"}}."""
        return {"error": {"code": self.code_name, "message": self.message, "request_id": request_id}}


class InvalidImage(GatewayError):
    kind = ErrorKind.INVALID_IMAGE


class InvalidArgument(GatewayError):
    kind = ErrorKind.INVALID_ARGUMENT


class ModelNotFound(GatewayError):
    kind = ErrorKind.NOT_FOUND


class TooLarge(GatewayError):
    kind = ErrorKind.TOO_LARGE


class Overloaded(GatewayError):
    kind = ErrorKind.OVERLOADED


class DeadlineExceeded(GatewayError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Unavailable(GatewayError):
    kind = ErrorKind.UNAVAILABLE


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
