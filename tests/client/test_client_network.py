"""The clients against a misbehaving network: a fake HTTP server in a thread on 127.0.0.1 that
drips its answer byte by byte, answers 200 with what is not the API's JSON, or with a body that
does not decode; a refused port; a proxy that answers every gRPC call UNAVAILABLE at once. The
client keeps its deadline, raises typed errors, keeps every image's result in classify_many and
classify_batch, and retries no more than its policy says. (The real gateway never answers this
way: these are the proxies and broken middleboxes between a caller and it.)
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from imgclass_client import ClassifierClient, ClassifierError, DeadlineExceeded, RestClassifierClient, Unavailable
from imgclass_client.retry import RetryPolicy

pytestmark = pytest.mark.unit  # in-process: a thread, no model, no gateway

ANSWER = {"model": "fashion", "model_version": 1, "label": "Bag", "confident": True, "reason": "CONFIDENT",
          "predictions": [{"label": "Bag", "score": 0.99}]}


@dataclass
class Behaviour:
    """What the fake server answers next: `body` with `headers`, or the whole answer dripped one
    byte every `drip_every` seconds."""

    body: bytes = b""
    headers: dict = field(default_factory=dict)
    drip_every: float = 0.0
    paths: list = field(default_factory=list)   # the request paths seen
    dripping: threading.Event = field(default_factory=threading.Event)      # a drip started
    dripped_all: threading.Event = field(default_factory=threading.Event)   # a drip reached its end


class FakeGateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = Behaviour()
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeGateway

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        behaviour = self.server.behaviour
        behaviour.paths.append(self.path)
        head = "".join(f"{k}: {v}\r\n" for k, v in behaviour.headers.items())
        raw = (f"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\n"
               f"content-length: {len(behaviour.body)}\r\n"
               f"{head}\r\n").encode() + behaviour.body
        if not behaviour.drip_every:
            self.wfile.write(raw)
            return
        behaviour.dripping.set()
        try:
            for i in range(len(raw)):
                self.wfile.write(raw[i:i + 1])
                self.wfile.flush()
                if self.server.stopping.wait(behaviour.drip_every):  # the fake's pace, ended at teardown
                    return
            behaviour.dripped_all.set()
        except OSError:  # the client gave up and closed the connection
            pass


@pytest.fixture(scope="module")
def fake():
    server = FakeGateway()
    thread = threading.Thread(target=server.serve_forever, name="fake-gateway", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def behaviour(fake):
    fake.behaviour = Behaviour()
    return fake.behaviour


def test_an_answer_dripped_byte_by_byte_cannot_hold_a_call_past_its_deadline(fake, behaviour):
    """A 200 answer of about 250 bytes, one byte every 0.05 s (about 12 s in all), status line
    included: a call with a 0.5 s deadline ends with DeadlineExceeded while the answer is still
    dripping (httpx's own timeouts apply to each read, and every byte comes in time)."""
    behaviour.body, behaviour.drip_every = json.dumps(ANSWER).encode(), 0.05
    with RestClassifierClient(fake.url, timeout=0.5) as client:
        with pytest.raises(DeadlineExceeded):
            client.classify(b"image")
        assert behaviour.dripping.is_set() and not behaviour.dripped_all.is_set()
        # The same for every image of a classify_many: each its own DeadlineExceeded, none lost.
        results = client.classify_many([b"a", b"b"], timeout=0.3)
        assert [type(r.error) for r in results] == [DeadlineExceeded, DeadlineExceeded]
        assert not behaviour.dripped_all.is_set()


@pytest.mark.parametrize("body, headers, says", [
    (b"<html>502 from a proxy, sent as 200</html>", {}, "the gateway's answer was not JSON"),
    (b"[1, 2, 3]", {}, "the gateway's answer was not a JSON object but list"),
    (b"not gzip at all", {"content-encoding": "gzip"}, "could not be decoded"),
    (json.dumps({"predictions": [{"score": "high"}]}).encode(), {}, "not the shape the API describes"),
])
def test_an_answer_that_is_not_the_apis_json_is_a_classifier_error(fake, behaviour, body, headers, says):
    behaviour.body, behaviour.headers = body, headers
    with RestClassifierClient(fake.url, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(ClassifierError) as raised:
            client.classify(b"image")
        assert type(raised.value) is ClassifierError and says in raised.value.message
        assert raised.value.code == "UNKNOWN" and not raised.value.retryable
        results = client.classify_many([b"a", b"b", b"c"], concurrency=2)  # nothing lost: one error per image
        assert [r.index for r in results] == [0, 1, 2] and all(says in r.error.message for r in results)


def test_a_batch_entry_not_of_the_apis_shape_is_that_images_error(fake, behaviour):
    behaviour.body = json.dumps({"responses": [ANSWER, "garbage"]}).encode()
    with RestClassifierClient(fake.url) as client:
        good, bad = client.classify_batch({"one": b"a", "two": b"b"})
    assert good.unwrap().label == "Bag" and bad.id == "two" and bad.error.code == "UNKNOWN"


def test_model_names_are_one_path_segment(fake, behaviour):
    behaviour.body = json.dumps(ANSWER).encode()
    with RestClassifierClient(fake.url) as client:
        client.classify(b"image", model="a/b c?")
    assert behaviour.paths == ["/v1/models/a%2Fb%20c%3F:classify"]


def test_a_refused_connection_without_wait_for_ready_is_retried_by_the_policy():
    """Nothing listens on the port: with wait_for_ready=False each attempt is an Unavailable that
    the retry policy retries; a budget of one retry shows it was taken."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = unused.getsockname()[1]
        policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, budget_percent=0, budget_min_per_second=0)
        with RestClassifierClient(f"http://127.0.0.1:{port}", wait_for_ready=False, retry=policy) as client:
            budget = client._retrier.budget
            with pytest.raises(ClassifierError) as raised:
                client.classify(b"image", timeout=5)
            assert raised.value.code == "UNAVAILABLE" and raised.value.retryable
            assert budget.reserve(within=0) is None  # its one token went to a retry


def test_a_grpc_call_reaches_a_failing_proxy_at_most_max_attempts_times():
    """A proxy answering UNAVAILABLE before any header (where grpc's own retry policy would apply):
    a call with max_attempts=3 reaches it three times; the channel adds no retries of its own."""
    calls = []

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(request)
        context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream")

    handler = grpc.method_handlers_generic_handler(
        "classifier.v1.Classifier", {"Classify": grpc.unary_unary_rpc_method_handler(refuse)})
    server = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ClassifierClient(f"127.0.0.1:{port}", retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client:
            with pytest.raises(Unavailable):
                client.classify(b"image", timeout=20)
    finally:
        server.stop(None)
    assert len(calls) == 3
