"""imgclass-client (clients/python) against a real gateway and model server (the committed model).

Every method of the three clients (blocking gRPC, asyncio gRPC, REST); typed errors with request
ids; TLS, mutual TLS and an API key; a gateway restarted under a classify_many of 200 images and a
gateway overloaded on purpose, both with the client's default settings: no errors; batches whose
refused images are sent again; a client closed under a classify_many (every result kept).
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import free_port, metric
from imgclass_client import (AsyncClassifierClient, ClassifierClient, ClassifierError, DeadlineExceeded,
                             ImageReadError, InvalidArgument, NotFound, Overloaded, RestClassifierClient, RetryPolicy,
                             TooLarge, Unauthenticated)
from tls_support import KEYS, issue, make_ca, start
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
IMAGES = list(stack.example_images())
EXPECTED = {"ankle-boot.png": "Ankle boot", "bag.png": "Bag", "trouser.png": "Trouser"}


@pytest.fixture(scope="module")
def model_server(served):
    return served.server


@pytest.fixture(scope="module")
def gateway(served):
    return served.gateway


@pytest.fixture(scope="module")
def grpc_client(gateway):
    with ClassifierClient(gateway.grpc_target) as client:
        yield client


@pytest.fixture(scope="module")
def rest_client(gateway):
    with RestClassifierClient(gateway.http_url) as client:
        yield client


def by_name(name: str) -> Path:
    return next(p for p in IMAGES if p.name == name)


def assert_answers(results, ids) -> None:
    """Per-item results in input order: examples classified, the missing file an ImageReadError."""
    assert [r.index for r in results] == list(range(len(ids))) and [r.id for r in results] == ids
    for result in results:
        if result.id == "missing":
            assert isinstance(result.error, ImageReadError) and result.classification is None
            continue
        assert result.ok, result.error
        answer = result.unwrap()
        assert answer.model == "fashion" and answer.model_version == 1 and answer.request_id
        assert len(answer.predictions) == 5 and answer.predictions == tuple(sorted(
            answer.predictions, key=lambda p: -p.score))


def mixed_inputs(tmp_path: Path) -> dict:
    """id -> image: bytes, a path, and a path that does not exist."""
    return {"bytes": by_name("bag.png").read_bytes(), "path": by_name("trouser.png"),
            "missing": tmp_path / "missing.png", "photo": by_name("sneaker-640x480.jpg")}


def test_blocking_grpc_client_every_method(grpc_client, tmp_path):
    answer = grpc_client.classify(by_name("ankle-boot.png"), top_k=3, version=1, request_id="client-test-1")
    assert (answer.label, answer.confident, answer.request_id) == ("Ankle boot", True, "client-test-1")
    assert [p.label for p in answer.predictions][:1] == ["Ankle boot"] and len(answer.predictions) == 3
    assert answer.to_dict()["predictions"][0]["label"] == "Ankle boot"

    inputs = mixed_inputs(tmp_path)
    assert_answers(grpc_client.classify_many(inputs, concurrency=3), list(inputs))
    assert_answers(grpc_client.classify_batch(inputs), list(inputs))
    assert_answers(list(grpc_client.stream(inputs)), list(inputs))
    by_path = grpc_client.classify_many(p for p in IMAGES)  # paths from a generator: ids are the paths
    assert [r.id for r in by_path] == [str(p) for p in IMAGES] and all(r.ok for r in by_path)
    for result in by_path:
        if Path(result.id).name in EXPECTED:
            assert result.unwrap().label == EXPECTED[Path(result.id).name]

    (model,) = grpc_client.list_models()
    assert (model.name, model.version, model.state, model.available) == ("fashion", 1, "AVAILABLE", True)
    assert len(model.labels) == 10


def test_asyncio_grpc_client_every_method(gateway, tmp_path):
    inputs = mixed_inputs(tmp_path)

    async def main():
        async with AsyncClassifierClient(gateway.grpc_target) as client:
            answer = await client.classify(by_name("ankle-boot.png").read_bytes(), top_k=2)
            assert answer.label == "Ankle boot" and len(answer.predictions) == 2 and answer.request_id
            assert_answers(await client.classify_many(inputs, concurrency=2), list(inputs))
            assert_answers(await client.classify_batch(inputs), list(inputs))
            assert_answers([r async for r in client.stream(inputs)], list(inputs))
            assert [m.name for m in await client.list_models()] == ["fashion"]
            with pytest.raises(InvalidArgument):
                await client.classify(b"not an image")

    asyncio.run(main())


def test_rest_client_every_method(rest_client, grpc_client, tmp_path):
    answer = rest_client.classify(by_name("ankle-boot.png"), top_k=3, request_id="client-test-2")
    assert answer == grpc_client.classify(by_name("ankle-boot.png"), top_k=3, request_id="client-test-2")
    inputs = mixed_inputs(tmp_path)
    assert_answers(rest_client.classify_many(inputs, concurrency=3), list(inputs))
    assert_answers(rest_client.classify_batch(inputs), list(inputs))
    assert rest_client.list_models() == grpc_client.list_models()


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_errors_are_typed_and_carry_the_request_id(transport, grpc_client, rest_client):
    client = grpc_client if transport == "grpc" else rest_client
    cases = [
        (lambda: client.classify(b"not an image", request_id=f"bad-{transport}"), InvalidArgument),
        (lambda: client.classify(by_name("bag.png"), model="no-such-model", request_id=f"bad-{transport}"),
         NotFound),
    ]
    for call, kind in cases:
        with pytest.raises(kind) as raised:
            call()
        error = raised.value
        assert isinstance(error, ClassifierError) and not error.retryable
        assert error.request_id == f"bad-{transport}" and error.message and "Traceback" not in error.message
        assert (error.http_status is None) == (transport == "grpc")
    results = client.classify_many([b"not an image", by_name("bag.png")])
    assert isinstance(results[0].error, InvalidArgument) and results[1].unwrap().label == "Bag"
    with pytest.raises(DeadlineExceeded):
        client.classify(by_name("bag.png"), timeout=0.0001)


def test_a_batch_over_the_limit_is_too_large_not_overload(grpc_client):
    with pytest.raises(TooLarge):
        grpc_client.classify_batch([by_name("bag.png").read_bytes()] * 65)


# -- security: TLS, mutual TLS, API key ---------------------------------------------------------------

def test_mutual_tls_and_api_key(model_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-pki")
    ca = make_ca(folder, "ca")
    server, client_cert = issue(folder, ca, "gateway", "IP:127.0.0.1,DNS:localhost"), issue(folder, ca, "client", "DNS:c")
    client_tls = ssl.create_default_context(cafile=str(ca.cert))
    client_tls.load_cert_chain(client_cert.cert, client_cert.key)
    gw = start(model_server.grpc_target, f"--tls-cert-file={server.cert}", f"--tls-key-file={server.key}",
               f"--tls-client-ca-file={ca.cert}", f"--api-keys={KEYS[0]}",
               ready_url_kwargs={"verify": client_tls})
    secure = dict(ca=ca.cert, cert=client_cert.cert, key=client_cert.key.read_bytes(), api_key=KEYS[0])
    try:
        with ClassifierClient(gw.grpc_target, **secure) as grpc_client, \
                RestClassifierClient(f"127.0.0.1:{gw.http_port}", **secure) as rest_client:
            assert rest_client.base_url.startswith("https://")
            for client in (grpc_client, rest_client):
                assert client.classify(by_name("bag.png")).label == "Bag"
                assert client.list_models()[0].name == "fashion"
        without_key = {k: v for k, v in secure.items() if k != "api_key"}
        with ClassifierClient(gw.grpc_target, **without_key) as grpc_client, \
                RestClassifierClient(f"127.0.0.1:{gw.http_port}", **without_key) as rest_client:
            for client in (grpc_client, rest_client):
                with pytest.raises(Unauthenticated) as raised:
                    client.classify(by_name("bag.png"))
                assert raised.value.request_id
    finally:
        gw.process.stop()


# -- resilience with the default settings -------------------------------------------------------------

@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_gateway_restarted_under_classify_many_loses_nothing(model_server, transport):
    """200 images; after the 60th is handed out, the gateway stops (draining) and starts again on the
    same ports while the client goes on with its defaults: every image is classified."""
    ports = dict(grpc_port=free_port(), http_port=free_port())
    gateways = [stack.start_gateway(backend=model_server.grpc_target, **ports)]
    stopped = threading.Event()

    def restart() -> None:
        gateways[0].process.stop()
        stopped.set()
        gateways.append(stack.start_gateway(backend=model_server.grpc_target, **ports))

    def images():
        for i in range(200):
            if i == 60:
                threading.Thread(target=restart, daemon=True).start()
                assert stopped.wait(30), "the gateway did not stop"
            yield IMAGES[i % len(IMAGES)].read_bytes()

    client = (ClassifierClient(gateways[0].grpc_target) if transport == "grpc"
              else RestClassifierClient(gateways[0].http_url))
    try:
        with client:
            results = client.classify_many(images())
        failures = [r for r in results if not r.ok]
        assert not failures, (len(failures), failures[:3])
        assert len(results) == 200
        assert len(gateways) == 2 and gateways[0].process.returncode is not None
        assert metric(gateways[1].http_url, "gateway_decisions_total") > 0  # the new gateway answered some
    finally:
        for gw in gateways:
            gw.process.stop()


def test_an_overloaded_gateway_is_retried_until_done(model_server):
    """A gateway with room for one queued request and one pending decode refuses most of 16
    concurrent callers; the client backs off (jitter, budget) and every image is classified. The
    same gateway refuses most images of a batch of six: every client sends them again."""
    gw = stack.start_gateway(backend=model_server.grpc_target,
                             extra_args=["--max-queue=1", "--max-pending-decodes=1", "--decode-workers=1"])
    try:
        with ClassifierClient(gw.grpc_target) as grpc_client, RestClassifierClient(gw.http_url) as rest_client:
            images = [p.read_bytes() for p in IMAGES]
            grpc_results = grpc_client.classify_many(images * 6, concurrency=16)
            rest_results = rest_client.classify_many(images * 2, concurrency=16)
        refused = metric(gw.http_url, "gateway_requests_total", status="RESOURCE_EXHAUSTED")
        assert refused > 0, "the gateway was never overloaded: the test proves nothing"
        failures = [r for r in grpc_results + rest_results if not r.ok]
        assert not failures, (refused, failures[:3])

        batch = (images * 6)[:6]
        with RestClassifierClient(gw.http_url, retry=RetryPolicy(max_attempts=1)) as impatient:
            refused_items = [r.error for r in impatient.classify_batch(batch) if not r.ok]
        assert refused_items and all(isinstance(e, Overloaded) for e in refused_items), refused_items
        patient = RetryPolicy(max_attempts=10)
        with ClassifierClient(gw.grpc_target, retry=patient) as grpc_client, \
                RestClassifierClient(gw.http_url, retry=patient) as rest_client:
            for client in (grpc_client, rest_client):
                results = client.classify_batch(batch)
                assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    finally:
        gw.process.stop()


# -- closing ------------------------------------------------------------------------------------------

def is_closed_error(error) -> bool:
    return (type(error) is ClassifierError and (error.code, error.message) == ("CANCELLED", "the client is closed")
            and not error.retryable)


def assert_closed_under_classify_many(results) -> None:
    """12 images, the client closed as the fifth was handed out, two calls in flight: every image
    has its result; the first two are classified, the last seven are the closed client's error."""
    assert [r.index for r in results] == list(range(12))
    assert all(r.ok or is_closed_error(r.error) for r in results), [r.error for r in results]
    assert all(r.ok for r in results[:2]) and all(is_closed_error(r.error) for r in results[5:])


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_closing_a_client_under_classify_many_loses_nothing(gateway, transport):
    image = by_name("bag.png").read_bytes()
    client = ClassifierClient(gateway.grpc_target) if transport == "grpc" else RestClassifierClient(gateway.http_url)

    def images():
        for i in range(12):
            if i == 4:
                client.close()
            yield image

    assert_closed_under_classify_many(client.classify_many(images(), concurrency=2))
    for call in (lambda: client.classify(image), lambda: client.classify_batch([image]), client.list_models):
        with pytest.raises(ClassifierError) as raised:
            call()
        assert is_closed_error(raised.value)
    if transport == "grpc":
        with pytest.raises(ClassifierError) as raised:
            list(client.stream([image]))
        assert is_closed_error(raised.value)


def test_closing_an_asyncio_client_under_classify_many_loses_nothing(gateway):
    image = by_name("bag.png").read_bytes()

    async def main():
        client = AsyncClassifierClient(gateway.grpc_target)
        fifth = asyncio.Event()

        def images():
            for i in range(12):
                if i == 4:
                    fifth.set()
                yield image

        many = asyncio.ensure_future(client.classify_many(images(), concurrency=2))
        await fifth.wait()
        await client.close()
        assert_closed_under_classify_many(await many)
        for call in (client.classify(image), client.list_models(), client.stream([image]).__anext__()):
            with pytest.raises(ClassifierError) as raised:
                await call
            assert is_closed_error(raised.value)

    asyncio.run(main())


def test_an_asyncio_client_used_from_another_loop_says_so(gateway):
    async def make():
        return AsyncClassifierClient(gateway.grpc_target)

    client = asyncio.run(make())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(client.list_models())


# -- installed from its folder into a clean virtualenv ------------------------------------------------

CLEAN_VENV_USE = """
import asyncio, sys
from pathlib import Path
import imgclass_client
from imgclass_client import AsyncClassifierClient, ClassifierClient, RestClassifierClient

package = Path(imgclass_client.__file__).parent
assert "site-packages" in package.parts, package
assert (package / "py.typed").is_file() and (package / "proto/classifier/v1/classifier_pb2.pyi").is_file()
grpc_target, http_url, image = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with ClassifierClient(grpc_target) as client:
    results = client.classify_many([image] * 4, concurrency=2)
    assert all(r.ok for r in results), results
with RestClassifierClient(http_url) as client:
    assert client.classify(image).label == results[0].unwrap().label

async def main():
    async with AsyncClassifierClient(grpc_target) as client:
        return await client.classify(image)

print(sys.version_info[:2], asyncio.run(main()).label)
"""


def python_for(version: str) -> str | None:
    """An interpreter of `version` on this machine (PATH, else pyenv's versions), or None."""
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.startswith(f"Python {version}."):
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_installs_in_a_clean_venv_and_works_outside_the_repository(version, gateway, tmp_path):
    python = python_for(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    source = tmp_path / "imgclass-client"  # a copy: building in the repository would leave build/ behind
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          str(source)], capture_output=True, text=True, timeout=540)
    assert pip.returncode == 0, pip.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    (outside / "classifier").mkdir(parents=True)  # another package named like the proto's
    (outside / "classifier" / "__init__.py").write_text("raise ImportError('the wrong classifier package')\n")
    use = subprocess.run([str(venv / "bin" / "python"), "-c", CLEAN_VENV_USE, gateway.grpc_target, gateway.http_url,
                          str(by_name("coat.png"))], cwd=outside, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert use.returncode == 0, use.stderr[-3000:]
    assert use.stdout.strip().endswith("Coat"), use.stdout
