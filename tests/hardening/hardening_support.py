"""Helpers shared by the tests/test_hardening_*.py files: one answer shape for both transports,
metrics and memory of a running gateway, and the checks every error answer must pass.

The gateway under test is always a subprocess, reached over the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc
import httpx

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from hostile_images import MALFORMED_MULTIPART, hostile_cases

REQUEST_ID = "x-request-id"
# What must never appear in a client-facing error: tracebacks, code locations, Python internals,
# addresses of the machines behind the gateway.
_LEAKS = re.compile(r"Traceback|File \"|\.py\b|<class |0x[0-9a-f]{6,}|ipv[46]:|127\.0\.0\.1|localhost|"
                    r"\[::1?\]|/work/|/tmp/|site-packages", re.IGNORECASE)


@dataclass
class Answer:
    """What a client got, whichever transport it used."""

    transport: str                  # "grpc" | "rest"
    code: str                       # gRPC status name; REST: the error body's code, "OK" for 200
    message: str = ""
    request_id: str = ""            # from the trailing metadata (gRPC) or the x-request-id header (REST)
    http_status: int | None = None
    body: dict = field(default_factory=dict)  # the answer's JSON (REST) or a dict of the response (gRPC)
    seconds: float = 0.0
    raw: str = ""                   # the REST body as text, to look for leaks
    headers: dict = field(default_factory=dict)  # REST response headers

    @property
    def ok(self) -> bool:
        return self.code == "OK"


def response_json(response: pb.ClassifyResponse) -> dict:
    return {"model": response.model, "model_version": response.model_version, "label": response.label,
            "confident": response.confident,
            "predictions": [{"label": p.label, "score": p.score} for p in response.predictions]}


def grpc_answer(started: float, response: pb.ClassifyResponse | None = None,
                error: grpc.RpcError | None = None, call=None) -> Answer:
    seconds = time.perf_counter() - started
    if error is None:
        rid = dict(call.trailing_metadata() or ()).get(REQUEST_ID, "") if call is not None else ""
        return Answer("grpc", "OK", request_id=rid, body=response_json(response), seconds=seconds)
    trailing = dict(error.trailing_metadata() or ())
    return Answer("grpc", error.code().name, error.details() or "", trailing.get(REQUEST_ID, ""),
                  seconds=seconds, raw=error.details() or "")


def rest_answer(started: float, response: httpx.Response) -> Answer:
    seconds = time.perf_counter() - started
    rid = response.headers.get(REQUEST_ID, "")
    try:
        body = response.json()
    except ValueError:
        body = {}
    headers = dict(response.headers)
    if response.status_code == 200:
        return Answer("rest", "OK", request_id=rid, http_status=200, body=body, seconds=seconds, raw=response.text,
                      headers=headers)
    error = body.get("error", {}) if isinstance(body, dict) else {}
    answer = Answer("rest", error.get("code", f"HTTP {response.status_code}"), error.get("message", ""), rid,
                    response.status_code, body, seconds, response.text, headers)
    assert error.get("request_id") == rid, f"request id of the body {error.get('request_id')!r} != header {rid!r}"
    return answer


def classify_grpc(stub, image: bytes, *, model: str = "", top_k: int = 0, timeout: float = 30,
                  metadata: Sequence[tuple[str, str]] = ()) -> Answer:
    started = time.perf_counter()
    try:
        response, call = stub.Classify.with_call(pb.ClassifyRequest(model=model, image=image, top_k=top_k),
                                                 timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return grpc_answer(started, error=exc)
    return grpc_answer(started, response, call=call)


def classify_rest(client: httpx.Client, image: bytes, *, content_type: str = "image/png", model: str = "",
                  top_k: int = 0, headers: dict | None = None) -> Answer:
    path = f"/v1/models/{model}:classify" if model else "/v1/classify"
    params = {"top_k": top_k} if top_k else {}
    started = time.perf_counter()
    response = client.post(path, content=image, params=params,
                           headers={"content-type": content_type, **(headers or {})})
    return rest_answer(started, response)


async def aclassify_grpc(stub, image: bytes, *, timeout: float = 30, model: str = "",
                         metadata: Sequence[tuple[str, str]] = ()) -> Answer:
    """The same as classify_grpc, with a grpc.aio stub."""
    started = time.perf_counter()
    call = stub.Classify(pb.ClassifyRequest(model=model, image=image), timeout=timeout, metadata=metadata)
    try:
        response = await call
    except grpc.RpcError as exc:
        return grpc_answer(started, error=exc)
    answer = grpc_answer(started, response)
    answer.request_id = dict(await call.trailing_metadata() or ()).get(REQUEST_ID, "")
    return answer


async def aclassify_rest(client: httpx.AsyncClient, image: bytes, *, content_type: str = "image/png",
                         model: str = "", headers: dict | None = None) -> Answer:
    """The same as classify_rest, with an httpx.AsyncClient."""
    path = f"/v1/models/{model}:classify" if model else "/v1/classify"
    started = time.perf_counter()
    response = await client.post(path, content=image, headers={"content-type": content_type, **(headers or {})})
    return rest_answer(started, response)


@dataclass(frozen=True)
class Request:
    """One classify request of a load, with the code its answer must have."""

    transport: str                  # "grpc" | "rest"
    image: bytes
    content_type: str = "image/png"
    model: str = ""
    expect: str = "OK"


def hostile_requests(good: bytes) -> Iterator[Request]:
    """Endless: every hostile image, malformed multipart body and an unknown model, over both
    transports (multipart over REST only)."""
    mixes = [(c.data, c.content_type, "", "OK" if c.decodable else "INVALID_ARGUMENT") for c in hostile_cases()]
    mixes += [(body, content_type, "", "INVALID_ARGUMENT") for _, content_type, body, _ in MALFORMED_MULTIPART]
    mixes += [(good, "image/png", "no-such-model", "NOT_FOUND")]
    for data, content_type, model, expect in itertools.cycle(mixes):
        if not content_type.startswith("multipart/"):
            yield Request("grpc", data, content_type, model, expect)
        yield Request("rest", data, content_type, model, expect)


async def send_all(gw, requests: Iterable[Request], concurrency: int = 16) -> list[tuple[Request, Answer]]:
    """Send every request, `concurrency` at a time, over one gRPC channel and one HTTP client."""
    todo = iter(list(requests))  # shared by the workers
    done: list[tuple[Request, Answer]] = []
    async with grpc.aio.insecure_channel(gw.grpc_target) as channel, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=60) as client:
        stub = pb_grpc.ClassifierStub(channel)

        async def worker() -> None:
            for r in todo:
                if r.transport == "grpc":
                    answer = await aclassify_grpc(stub, r.image, model=r.model)
                else:
                    answer = await aclassify_rest(client, r.image, content_type=r.content_type, model=r.model)
                done.append((r, answer))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def assert_clean_error(answer: Answer, *, given_id: str | None = None) -> None:
    """Every error a client sees: a message, a request id (the client's, when it sent one), and no
    traceback, code location or internal address."""
    assert not answer.ok, answer
    assert answer.message.strip(), f"{answer.transport} {answer.code}: empty message"
    assert answer.request_id, f"{answer.transport} {answer.code} {answer.message!r}: no request id"
    if given_id is not None:
        assert answer.request_id == given_id, (answer.request_id, given_id)
    leak = _LEAKS.search(answer.message) or _LEAKS.search(answer.raw)
    assert leak is None, f"{answer.transport} error leaks {leak.group(0)!r}: {answer.raw or answer.message!r}"


# -- the gateway process from outside ---------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (what the kernel charges it, not what it reports)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024



