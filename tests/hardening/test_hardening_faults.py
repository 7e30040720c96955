"""Faults, against a real gateway and a real model server: deadlines, overload, a model server that
dies and comes back, SIGTERM, new model versions under load (README, "Errors").

Slowness without mocks: the "slow" model server runs with server-side batching whose
`batch_timeout_micros` is half a second, so a lone Predict waits 0.5 s for company - work that is
reliably longer than a short client deadline, and a bottleneck that fills the gateway's queue.
A dead model server is a SIGKILLed one; it comes back on the same port.

The gateway is observed from outside only: answers, /metrics (backend calls by code, backend calls
in flight, circuit state), health and readiness, its exit status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import free_port, metric, wait_until
from hardening_support import Answer, aclassify_grpc, aclassify_rest, assert_clean_error, classify_grpc, classify_rest
from tools import stack

BATCH_WAIT_SECONDS = 0.5
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def slow_server(tiny_models_dir, tmp_path_factory):
    """A model server whose every Predict takes at least BATCH_WAIT_SECONDS."""
    workdir = tmp_path_factory.mktemp("slow")
    shutil.copytree(tiny_models_dir / "fashion", workdir / "fashion")
    (workdir / "batching.config").write_text(
        f"max_batch_size {{ value: 64 }}\nbatch_timeout_micros {{ value: {int(BATCH_WAIT_SECONDS * 1e6)} }}\n"
        "num_batch_threads { value: 2 }\n")
    server = stack.start_model_server(
        model_base_path=workdir / "fashion",
        extra_args=["--enable_batching", f"--batching_parameters_file={workdir / 'batching.config'}"])
    yield server
    server.process.stop()


@contextlib.contextmanager
def started_gateway(server, *flags: str, **kwargs):
    """A gateway in front of `server`, stopped on the way out whatever happens."""
    gw = stack.start_gateway(backend=server.grpc_target, extra_args=list(flags), **kwargs)
    try:
        yield gw
    finally:
        gw.process.stop()


@contextlib.contextmanager
def started_server(**kwargs):
    server = stack.start_model_server(**kwargs)
    try:
        yield server
    finally:
        server.process.stop()


def predict_calls(gw, *codes: str) -> float:
    return sum(metric(gw.http_url, "gateway_backend_requests_total", method="Predict", code=c) for c in codes)


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def ready(gw) -> int:
    return httpx.get(f"{gw.http_url}/readyz", timeout=5).status_code


# -- deadlines --------------------------------------------------------------------------------------------

def assert_backend_call_cancelled(gw, before_ok: float, before_ended: float, *codes: str) -> None:
    """The Predict made for a request that timed out ended early (one more call with `codes`), nothing
    is in flight towards the model server, and - once the model server's batch wait is long over -
    no Predict completed OK after all."""
    wait_until(lambda: predict_calls(gw, *codes) == before_ended + 1, 2, f"a Predict ended with {codes}")
    assert metric(gw.http_url, "gateway_backend_inflight_requests") == 0
    time.sleep(BATCH_WAIT_SECONDS * 2)  # long enough for an uncancelled Predict to come back OK
    assert predict_calls(gw, "OK") == before_ok, "the backend call ran to completion"


def test_a_deadline_shorter_than_the_work_cancels_the_work_and_its_backend_call(slow_server, images):
    with started_gateway(slow_server) as gw, \
            started_gateway(slow_server, "--request-timeout-seconds=0.3") as impatient:
        with grpc.insecure_channel(gw.grpc_target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            assert classify_grpc(stub, images[0]).ok  # the model works, slowly
            # gRPC: the client's deadline (0.2 s) is the request's deadline.
            ok, ended = predict_calls(gw, "OK"), predict_calls(gw, "CANCELLED", "DEADLINE_EXCEEDED")
            answer = classify_grpc(stub, images[1], timeout=0.2, metadata=[("x-request-id", "late-1")])
            assert answer.code == "DEADLINE_EXCEEDED" and answer.seconds < BATCH_WAIT_SECONDS, answer
            assert_backend_call_cancelled(gw, ok, ended, "CANCELLED", "DEADLINE_EXCEEDED")

        # REST: a client that hangs up (its own 0.2 s timeout) has its work cancelled too.
        ok, cancelled = predict_calls(gw, "OK"), predict_calls(gw, "CANCELLED")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gw.http_url}/v1/classify", content=images[2], headers={"content-type": "image/png"},
                       timeout=httpx.Timeout(5, read=0.2))
        assert_backend_call_cancelled(gw, ok, cancelled, "CANCELLED")

        # REST: the gateway's own deadline (request_timeout_seconds) gives 504.
        ok, ended = predict_calls(impatient, "OK"), predict_calls(impatient, "CANCELLED", "DEADLINE_EXCEEDED")
        with httpx.Client(base_url=impatient.http_url, timeout=10) as client:
            answer = classify_rest(client, images[3], headers={"x-request-id": "late-2"})
        assert (answer.http_status, answer.code) == (504, "DEADLINE_EXCEEDED") and answer.seconds < 1.0, answer
        assert_clean_error(answer, given_id="late-2")
        assert_backend_call_cancelled(impatient, ok, ended, "CANCELLED", "DEADLINE_EXCEEDED")
        print(f"\n504 after {answer.seconds * 1000:.0f} ms (deadline 300 ms, the work takes >= 500 ms)")


# -- overload ----------------------------------------------------------------------------------------------

async def wave(gw, images: list[bytes]) -> list[Answer]:
    """As many requests at once as there are images, half over gRPC, half over REST."""
    async with grpc.aio.insecure_channel(gw.grpc_target) as channel, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=30) as client:
        stub = pb_grpc.ClassifierStub(channel)
        return await asyncio.gather(*(
            aclassify_grpc(stub, image) if i % 2 else aclassify_rest(client, image) for i, image in enumerate(images)))


def test_overload_is_refused_at_once_and_admitted_latency_stays_bounded(slow_server, images):
    """Queue bound 8, batches of 4, one batch at a time, each >= 0.5 s: of 60 simultaneous requests
    about a dozen are admitted, the rest refused at once (before any admitted one is answered), and
    the admitted wait at most (8 / 4 + 1) batches."""
    answers: list[Answer] = []
    with started_gateway(slow_server, "--max-batch-size=4", "--max-concurrent-batches=1", "--max-queue=8",
                         "--max-wait-ms=1", "--max-pending-decodes=1000") as gw:
        for _ in range(3):
            answers += asyncio.run(wave(gw, images[:60]))
    admitted = [a for a in answers if a.ok]
    refused = [a for a in answers if not a.ok]
    assert {a.code for a in refused} == {"RESOURCE_EXHAUSTED"}, {(a.code, a.message) for a in refused}
    assert all(a.http_status == 429 and a.headers.get("retry-after") for a in refused if a.transport == "rest")
    assert all("queued" in a.message for a in refused)
    for a in refused[:5]:
        assert_clean_error(a)
    slowest_refusal = max(a.seconds for a in refused)
    fastest_admitted = min(a.seconds for a in admitted)
    slowest_admitted = max(a.seconds for a in admitted)
    print(f"\n{len(answers)} requests: {len(admitted)} admitted (latency {fastest_admitted:.2f}-{slowest_admitted:.2f} s), "
          f"{len(refused)} refused (slowest refusal {slowest_refusal * 1000:.0f} ms)")
    assert 3 * 9 <= len(admitted) <= 3 * 24  # per wave: the first batch (1-4), 8 queued, a few late arrivals
    assert slowest_refusal < fastest_admitted, "a refusal waited for the backlog"
    assert slowest_admitted < (8 / 4 + 1) * BATCH_WAIT_SECONDS + 1.5


# -- SIGTERM ------------------------------------------------------------------------------------------------

def test_sigterm_goes_not_serving_first_finishes_in_flight_work_then_exits_0(slow_server, images):
    delay, grace = 1.0, 10.0
    gw = stack.start_gateway(backend=slow_server.grpc_target, extra_args=[
        "--max-batch-size=1", "--max-concurrent-batches=1", f"--shutdown-delay-seconds={delay}",
        f"--shutdown-grace-seconds={grace}"])
    updates: list[tuple[float, int]] = []
    try:
        with grpc.insecure_channel(gw.grpc_target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)

            def follow() -> None:
                try:
                    updates.extend((time.monotonic(), update.status) for update in watch)
                except grpc.RpcError as exc:  # cancelled below, once NOT_SERVING is seen
                    assert exc.code() == grpc.StatusCode.CANCELLED, exc

            threading.Thread(target=follow, daemon=True).start()
            wait_until(lambda: updates, 10, "the first health update")
            stub = pb_grpc.ClassifierStub(channel)
            rest = httpx.Client(base_url=gw.http_url, timeout=30)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                # One at a time through the backend, >= 0.5 s each: about 2 s of work in flight.
                calls = [pool.submit(classify_grpc, stub, images[i]) for i in range(3)]
                calls.append(pool.submit(classify_rest, rest, images[3]))
                wait_until(lambda: metric(gw.http_url, "gateway_inflight_requests", transport="grpc") >= 3 and
                           metric(gw.http_url, "gateway_inflight_requests", transport="http") >= 2,  # + /metrics
                           10, "4 requests in flight")
                sent = time.monotonic()
                gw.process.signal(signal.SIGTERM)
                readiness = wait_until(lambda: ready(gw) == 503 and time.monotonic(), delay, "/readyz 503")
                wait_until(lambda: NOT_SERVING in [status for _, status in updates], delay, "health NOT_SERVING")
                watch.cancel()  # a watcher told NOT_SERVING goes elsewhere (an open Watch would hold the grace)
                answers = [(c.result(timeout=30), time.monotonic()) for c in calls]
            exit_code = gw.process.proc.wait(timeout=grace + 10)
            exited = time.monotonic()
            rest.close()
    finally:
        gw.process.stop()
    not_serving = next(t for t, status in updates if status == NOT_SERVING)
    print(f"\nSIGTERM -> NOT_SERVING {(not_serving - sent) * 1000:.0f} ms, /readyz 503 {(readiness - sent) * 1000:.0f} ms, "
          f"last in-flight answer {max(t for _, t in answers) - sent:.2f} s, exit {exited - sent:.2f} s")
    assert [status for _, status in updates][:1] == [SERVING]
    assert not_serving - sent < 0.5
    assert all(a.ok for a, _ in answers), [a for a, _ in answers]
    assert max(t for _, t in answers) > sent + delay, "no request was still in flight when the ports closed"
    assert exit_code == 0 and exited - sent < delay + grace


# -- the model server dies and comes back --------------------------------------------------------------------

def test_model_server_down_fails_fast_opens_the_circuit_and_recovers(tiny_models_dir, tmp_path, images):
    shutil.copytree(tiny_models_dir / "fashion", tmp_path / "fashion")
    port = free_port()
    with contextlib.ExitStack() as cleanup:
        server = cleanup.enter_context(started_server(model_base_path=tmp_path / "fashion", port=port))
        gw = cleanup.enter_context(started_gateway(
            server, "--health-check-interval-seconds=0.5", "--circuit-failure-threshold=3", "--circuit-open-seconds=30",
            env={**os.environ, "GATEWAY_MODELS": json.dumps({"ghost": {}})}))
        rest = cleanup.enter_context(httpx.Client(base_url=gw.http_url, timeout=30))
        stub = pb_grpc.ClassifierStub(cleanup.enter_context(grpc.insecure_channel(gw.grpc_target)))

        def both(image: bytes, **kwargs) -> list[Answer]:
            return [classify_grpc(stub, image, **kwargs), classify_rest(rest, image, **kwargs)]

        assert all(a.ok for a in both(images[0]))
        for answer in both(images[0], model="ghost"):  # configured here, not loaded there
            assert (answer.code, answer.http_status in (None, 503)) == ("UNAVAILABLE", True), answer
            assert "not available" in answer.message
            assert_clean_error(answer)

        server.process.proc.kill()
        server.process.proc.wait(10)
        killed = time.monotonic()
        first = both(images[1])
        first_unavailable = time.monotonic() - killed
        wait_until(lambda: ready(gw) == 503, 2, "/readyz 503 with the model server down")
        not_ready = time.monotonic() - killed
        assert health_status(gw.grpc_target) == NOT_SERVING
        answers = first + [a for i in range(2, 8) for a in both(images[i])]
        for answer in answers:
            assert (answer.code, answer.http_status in (None, 503)) == ("UNAVAILABLE", True), answer
            assert answer.seconds < 1.0, answer
            assert_clean_error(answer)
            assert str(port) not in answer.message
        assert metric(gw.http_url, "gateway_circuit_state") == 1, "the circuit did not open"

        # Open: requests fail at once without a call to the model server.
        calls = predict_calls(gw, "OK", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL")
        while_open = [a for i in range(8, 28) for a in both(images[i])]
        assert all(a.code == "UNAVAILABLE" and a.seconds < 1.0 for a in while_open)
        assert predict_calls(gw, "OK", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL") == calls
        retries = metric(gw.http_url, "gateway_backend_retries_total")
        all_calls = metric(gw.http_url, "gateway_backend_requests_total")
        assert retries == metric(gw.http_url, "gateway_backend_retries_total", method="Predict"), "only Predict retries"
        assert retries <= 10 + 0.1 * all_calls, (retries, all_calls)  # within the retry budget

        cleanup.enter_context(started_server(model_base_path=tmp_path / "fashion", port=port))  # the same port
        back = time.monotonic()
        wait_until(lambda: classify_grpc(stub, images[30]).ok, 10, "a request answered again")
        recovered = time.monotonic() - back
        wait_until(lambda: ready(gw) == 200, 5, "/readyz 200 again")
        assert health_status(gw.grpc_target) == SERVING and all(a.ok for a in both(images[31]))
        assert metric(gw.http_url, "gateway_circuit_state") == 0 and gw.process.returncode is None
        print(f"\nmodel server killed: first UNAVAILABLE after {first_unavailable * 1000:.0f} ms "
              f"(slowest error {max(a.seconds for a in answers) * 1000:.0f} ms), not ready after {not_ready:.2f} s; "
              f"{len(while_open)} requests while open made 0 backend calls; {retries:.0f} retries of {all_calls:.0f} calls; "
              f"answering {recovered:.2f} s after the model server was AVAILABLE again")


# -- new model versions under load ---------------------------------------------------------------------------

@pytest.mark.slow
def test_two_version_swaps_under_mixed_load_fail_no_request(tiny_models_dir, tmp_path, images):
    base = tmp_path / "fashion"
    shutil.copytree(tiny_models_dir / "fashion", base)

    async def load(gw) -> tuple[list[Answer], list[int]]:
        answers: list[Answer] = []
        async with grpc.aio.insecure_channel(gw.grpc_target) as channel, \
                httpx.AsyncClient(base_url=gw.http_url, timeout=30) as client:
            stub = pb_grpc.ClassifierStub(channel)
            loop = asyncio.get_running_loop()
            seen: dict[int, float] = {}  # version -> when first answered

            async def worker(i: int, final: int) -> None:
                while final not in seen or loop.time() - seen[final] < 1.0:
                    answer = await (aclassify_grpc(stub, images[i]) if i % 2 else aclassify_rest(client, images[i]))
                    answers.append(answer)
                    if answer.ok:
                        seen.setdefault(answer.body["model_version"], loop.time())

            async def publish(version: int, after: int) -> None:
                while after not in seen or loop.time() - seen[after] < 0.5:
                    await asyncio.sleep(0.05)  # paced by what the load observes
                staging = tmp_path / f"staging-{version}"
                shutil.copytree(tiny_models_dir / "fashion" / "1", staging)
                staging.rename(base / str(version))  # atomic publish, as training does

            await asyncio.wait_for(asyncio.gather(publish(2, after=1), publish(3, after=2),
                                                  *(worker(i, final=3) for i in range(8))), 120)
            return answers, sorted(seen)

    with started_server(model_base_path=base, extra_args=["--file_system_poll_wait_seconds=1"]) as server, \
            started_gateway(server, "--health-check-interval-seconds=0.5") as gw:
        answers, versions = asyncio.run(load(gw))
    failed = [a for a in answers if not a.ok]
    print(f"\n{len(answers)} requests (gRPC and REST) across versions {versions}: {len(failed)} failed")
    assert versions == [1, 2, 3]
    assert not failed, [(a.transport, a.code, a.message) for a in failed[:5]]
