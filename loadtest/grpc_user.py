"""A Locust user that speaks gRPC, and the client interceptor that reports each call to Locust.

Locust only knows what its `request` event is told. `LocustReporter` sits on the user's channel
and, for every call (unary and bidirectional streaming alike), measures the time to the complete
answer, runs the user's answer check on it, and fires one `request` event named after the RPC
(`Classify`, `ClassifyStream`, ...). A call fails in the statistics when it ends with a non-OK
status or when the check rejects the answer; the status code or the check's message is what
Locust's failure table groups by.

gRPC must run on gevent inside Locust: `loadtest/locustfile.py` calls
`grpc.experimental.gevent.init_gevent()` before it imports this module.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import grpc
from locust import User

from loadtest.checks import InvalidAnswer

# (method name, requests, responses); raises InvalidAnswer when the answer is wrong.
AnswerCheck = Callable[[str, list, list], None]

REQUEST_TYPE = "grpc"


class RpcFailed(Exception):
    """A call that ended with a non-OK status, named by code and details (Locust groups by str)."""

    @classmethod
    def from_error(cls, exc: grpc.RpcError) -> "RpcFailed":
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return cls(f"{code.name if code else 'UNKNOWN'}: {details}")


def rpc_name(method: str) -> str:
    """'/classifier.v1.Classifier/Classify' -> 'Classify'."""
    return method.rsplit("/", 1)[-1]


class LocustReporter(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Client interceptor: one Locust `request` event per call, answer checked."""

    def __init__(self, request_event: Any, check: AnswerCheck):
        self._request_event = request_event
        self._check = check

    def intercept_unary_unary(self, continuation, client_call_details, request):
        start = time.perf_counter()
        outcome = continuation(client_call_details, request)
        try:
            response = outcome.result()
        except grpc.RpcError as exc:
            self._report(client_call_details.method, start, time.perf_counter(), 0, RpcFailed.from_error(exc))
            return outcome  # the caller's result() raises the same error
        end = time.perf_counter()
        failure = self._checked(client_call_details.method, [request], [response])
        self._report(client_call_details.method, start, end, response.ByteSize(), failure)
        return outcome

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        requests = list(request_iterator)
        start = time.perf_counter()
        call = continuation(client_call_details, iter(requests))
        try:
            responses = list(call)
        except grpc.RpcError as exc:
            self._report(client_call_details.method, start, time.perf_counter(), 0, RpcFailed.from_error(exc))
            return call  # iterating it again raises the same error
        end = time.perf_counter()
        failure = self._checked(client_call_details.method, requests, responses)
        self._report(client_call_details.method, start, end, sum(r.ByteSize() for r in responses), failure)
        return iter(responses)

    def _checked(self, method: str, requests: list, responses: list) -> InvalidAnswer | None:
        try:
            self._check(rpc_name(method), requests, responses)
        except InvalidAnswer as exc:
            return exc
        return None

    def _report(self, method: str, start: float, end: float, length: int, exception: Exception | None) -> None:
        self._request_event.fire(
            request_type=REQUEST_TYPE, name=rpc_name(method), response_time=(end - start) * 1000.0,
            response_length=length, exception=exception, context={},
        )


class GrpcUser(User):
    """Base for gRPC users: `self.stub` is a `stub_class` on a channel that reports every call.

    Subclasses name the target (`grpc_target`) and check answers (`check_answer`). Task code calls
    the stub inside `with self.reported():`: a failed call raises grpc.RpcError to the caller as
    usual, and since the interceptor has already counted it, the task just moves on.
    """

    abstract = True
    stub_class: type | None = None
    channel_options: tuple = ()

    def __init__(self, environment):
        super().__init__(environment)
        if self.stub_class is None:
            raise TypeError(f"{type(self).__name__} must set stub_class")
        reporter = LocustReporter(environment.events.request, self.check_answer)
        self._channel = grpc.intercept_channel(
            grpc.insecure_channel(self.grpc_target(), options=list(self.channel_options)), reporter)
        self.stub = self.stub_class(self._channel)

    def grpc_target(self) -> str:
        raise NotImplementedError

    def check_answer(self, method: str, requests: list, responses: list) -> None:
        """Raise InvalidAnswer when the answer to `method` is wrong; the default accepts any."""

    @contextlib.contextmanager
    def reported(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError:
            pass  # LocustReporter counted this call as a failure, with its status

    def on_stop(self) -> None:
        self._channel.close()
