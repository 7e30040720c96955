"""Security of the gateway, over the wire: API keys on both transports (checked in one place),
TLS and mutual TLS on both ports, TLS (with a client certificate) to the model server, and
start-up refusing unusable TLS settings.

Certificates are made here with the `openssl` command line (as tests/serving/test_serving_configs.py does):
a test CA, a gateway certificate for 127.0.0.1/localhost, a model-server certificate for the name
"model-server" only (so the gateway must be told that name), client certificates, and a rogue CA
whose certificates must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import fashion_test_images, metric
from hardening_support import assert_clean_error, classify_grpc, classify_rest
from hostile_images import png
from tls_support import KEYS, Pem, issue, make_ca, start
from tools import stack

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: Pem
    gateway: Pem        # 127.0.0.1 and localhost
    model_server: Pem   # "model-server" only
    client: Pem         # signed by the CA
    rogue_client: Pem   # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = make_ca(folder, "test-ca"), make_ca(folder, "rogue-ca")
    return Pki(ca, issue(folder, ca, "gateway", "IP:127.0.0.1,DNS:localhost"),
               issue(folder, ca, "model-server", "DNS:model-server"),
               issue(folder, ca, "client", "DNS:client"), issue(folder, rogue_ca, "rogue", "DNS:client"))


def grpc_credentials(pki: Pki, client: Pem | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), client.key.read_bytes() if client else None,
                                        client.cert.read_bytes() if client else None)


def https_context(pki: Pki, client: Pem | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


@pytest.fixture(scope="module")
def image(fashion_data) -> bytes:
    return png(fashion_test_images(fashion_data, 1)[0])


# -- API keys ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(model_server):
    gw = start(model_server.grpc_target, env={"GATEWAY_API_KEYS": ",".join(KEYS)})
    yield gw
    gw.process.stop()


@pytest.mark.parametrize("authorization, words", [
    (None, "needs an API key"),
    ("Bearer not-a-key", "not valid"),
    (f"Basic {KEYS[0]}", "Bearer"),
    ("Bearer", "Bearer"),
    (f"Bearer {KEYS[0]}x", "not valid"),
])
def test_requests_without_a_valid_key_are_refused_on_both_transports(keyed, image, authorization, words):
    predict_before = metric(keyed.http_url, "gateway_backend_requests_total", method="Predict")
    auth = {"authorization": authorization} if authorization else {}
    with grpc.insecure_channel(keyed.grpc_target) as channel, httpx.Client(base_url=keyed.http_url) as rest:
        answers = [classify_grpc(pb_grpc.ClassifierStub(channel), image, metadata=[*auth.items(), ("x-request-id", "k-1")]),
                   classify_rest(rest, image, headers={**auth, "x-request-id": "k-1"})]
    for answer in answers:
        assert answer.code == "UNAUTHENTICATED" and answer.http_status in (None, 401), answer
        assert words in answer.message and KEYS[0] not in answer.message
        assert_clean_error(answer, given_id="k-1")
    assert answers[1].headers["www-authenticate"].startswith("Bearer")
    assert metric(keyed.http_url, "gateway_backend_requests_total", method="Predict") == predict_before


def test_every_configured_key_works_on_both_transports(keyed, image):
    with grpc.insecure_channel(keyed.grpc_target) as channel, httpx.Client(base_url=keyed.http_url) as rest:
        stub = pb_grpc.ClassifierStub(channel)
        for key in KEYS:
            assert classify_grpc(stub, image, metadata=[("authorization", f"Bearer {key}")]).ok
            assert classify_rest(rest, image, headers={"authorization": f"bearer {key}"}).ok


def run_client(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m gateway.client ...`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "gateway.client", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_the_command_line_client_sends_the_key(keyed, image, tmp_path):
    (tmp_path / "shoe.png").write_bytes(image)
    for transport in ([], ["--rest"]):
        target = keyed.http_url if transport else keyed.grpc_target
        refused = run_client("--target", target, "classify", str(tmp_path / "shoe.png"), *transport)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stdout, refused
        flag = run_client("--target", target, "--api-key", KEYS[0], "classify", str(tmp_path / "shoe.png"), *transport)
        env = run_client("--target", target, "classify", str(tmp_path / "shoe.png"), *transport,
                         env={"GATEWAY_API_KEY": KEYS[1]})
        assert flag.returncode == env.returncode == 0, (flag, env)


def test_every_api_needs_the_key_but_probes_and_metrics(keyed, image):
    refused = []
    with grpc.insecure_channel(keyed.grpc_target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        calls = {
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=10),
            "ClassifyBatch": lambda: stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(image=image)]),
                                                        timeout=10),
            "ClassifyStream": lambda: list(stub.ClassifyStream(iter([pb.ClassifyRequest(image=image)]), timeout=10)),
            "reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            refused.append((name, err.value.code()))
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert refused == [(name, grpc.StatusCode.UNAUTHENTICATED) for name in calls]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for path in ("/v1/models", "/v1/examples", "/docs", "/openapi.json", "/"):
        assert httpx.get(f"{keyed.http_url}{path}", timeout=10).status_code == 401, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed.http_url}{path}", timeout=10).status_code == 200, path
    assert metric(keyed.http_url, "gateway_requests_total", status="UNAUTHENTICATED") > 0  # refusals are counted


def test_probes_and_metrics_can_require_the_key_too(model_server):
    key = {"authorization": f"Bearer {KEYS[1]}"}
    gw = start(model_server.grpc_target, "--public-health-and-metrics=false", env={"GATEWAY_API_KEYS": ",".join(KEYS)},
               ready_url_kwargs={"headers": key})
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{gw.http_url}{path}", timeout=10).status_code == 401, path
            assert httpx.get(f"{gw.http_url}{path}", timeout=10, headers=key).status_code == 200, path
        with grpc.insecure_channel(gw.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=list(key.items())).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        gw.process.stop()


def test_keys_are_never_printed():
    proc = subprocess.run([sys.executable, "-m", "gateway", "--print-settings"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "GATEWAY_API_KEYS": ",".join(KEYS)})
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["api_keys"] == ["**********"] * 2
    assert not any(key in proc.stdout + proc.stderr for key in KEYS)


# -- TLS on the gateway's ports ---------------------------------------------------------------------------------

def tls_flags(pki: Pki, mutual: bool) -> list[str]:
    flags = [f"--tls-cert-file={pki.gateway.cert}", f"--tls-key-file={pki.gateway.key}"]
    return flags + ([f"--tls-client-ca-file={pki.ca.cert}"] if mutual else [])


def test_tls_on_both_ports(model_server, pki, image):
    gw = start(model_server.grpc_target, *tls_flags(pki, mutual=False),
               ready_url_kwargs={"verify": https_context(pki)})
    try:
        with grpc.secure_channel(gw.grpc_target, grpc_credentials(pki)) as channel:
            assert classify_grpc(pb_grpc.ClassifierStub(channel), image).ok
        with httpx.Client(base_url=f"https://127.0.0.1:{gw.http_port}", verify=https_context(pki)) as rest:
            assert classify_rest(rest, image).ok
        with grpc.insecure_channel(gw.grpc_target) as plaintext:
            answer = classify_grpc(pb_grpc.ClassifierStub(plaintext), image, timeout=5)
        assert answer.code == "UNAVAILABLE"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gw.http_port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://127.0.0.1:{gw.http_port}/healthz", timeout=5)
    finally:
        gw.process.stop()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(model_server, pki, image, tmp_path):
    gw = start(model_server.grpc_target, *tls_flags(pki, mutual=True),
               ready_url_kwargs={"verify": https_context(pki, pki.client)})
    try:
        with grpc.secure_channel(gw.grpc_target, grpc_credentials(pki, pki.client)) as channel:
            assert classify_grpc(pb_grpc.ClassifierStub(channel), image).ok
        with httpx.Client(base_url=f"https://127.0.0.1:{gw.http_port}", verify=https_context(pki, pki.client)) as rest:
            assert classify_rest(rest, image).ok
        (tmp_path / "shoe.png").write_bytes(image)
        tls = ["--ca-file", str(pki.ca.cert), "--cert-file", str(pki.client.cert), "--key-file", str(pki.client.key)]
        for target, transport in ((gw.grpc_target, []), (f"https://127.0.0.1:{gw.http_port}", ["--rest"])):
            cli = run_client("--target", target, *tls, "classify", str(tmp_path / "shoe.png"), *transport)
            assert cli.returncode == 0, cli
        for client in (None, pki.rogue_client):
            with grpc.secure_channel(gw.grpc_target, grpc_credentials(pki, client)) as channel:
                assert classify_grpc(pb_grpc.ClassifierStub(channel), image, timeout=5).code == "UNAVAILABLE"
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"https://127.0.0.1:{gw.http_port}/healthz", timeout=5, verify=https_context(pki, client))
    finally:
        gw.process.stop()


# -- TLS to the model server ---------------------------------------------------------------------------------------

def test_the_gateway_calls_a_tls_model_server_with_its_client_certificate(tiny_models_dir, tmp_path, pki, image):
    """The model server (--ssl_config_file, as TF Serving) requires client certificates from the CA
    and presents a certificate for "model-server"; the gateway reaches it at 127.0.0.1."""
    shutil.copytree(tiny_models_dir / "fashion", tmp_path / "fashion")
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f"server_key: {json.dumps(pki.model_server.key.read_text())}\n"
                          f"server_cert: {json.dumps(pki.model_server.cert.read_text())}\n"
                          f"custom_ca: {json.dumps(pki.ca.cert.read_text())}\nclient_verify: true\n")
    server = stack.start_model_server(model_base_path=tmp_path / "fashion", extra_args=[f"--ssl_config_file={ssl_config}"])
    backend_tls = ["--backend-tls=true", f"--backend-ca-file={pki.ca.cert}", "--backend-tls-server-name=model-server"]
    try:
        gw = start(server.grpc_target, *backend_tls, f"--backend-cert-file={pki.client.cert}",
                   f"--backend-key-file={pki.client.key}")
        try:
            with grpc.insecure_channel(gw.grpc_target) as channel:
                answer = classify_grpc(pb_grpc.ClassifierStub(channel), image)
            assert answer.ok and answer.body["model_version"] == 1
        finally:
            gw.process.stop()

        without_cert = stack.start_gateway(backend=server.grpc_target, extra_args=backend_tls, wait_ready=False)
        try:
            with grpc.insecure_channel(without_cert.grpc_target) as channel:
                answer = classify_grpc(pb_grpc.ClassifierStub(channel), image, timeout=10)
            assert answer.code == "UNAVAILABLE", answer
            assert_clean_error(answer)
            assert httpx.get(f"{without_cert.http_url}/readyz", timeout=10).status_code == 503
        finally:
            without_cert.process.stop()
    finally:
        server.process.stop()


# -- unusable settings stop start-up ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--tls-cert-file={cert}"], "tls_cert_file is set but tls_key_file is not"),
    (["--tls-client-ca-file={cert}"], "tls_client_ca_file is set but tls_cert_file is not"),
    (["--backend-ca-file={cert}"], "without backend_tls"),
    (["--tls-cert-file={text}", "--tls-key-file={key}"], "not a PEM file"),
    (["--tls-cert-file={cert}", "--tls-key-file={other_key}"], "cannot be used"),
    (["--api-keys=has space,x"], "without spaces"),
])
def test_unusable_security_settings_stop_start_up_naming_the_setting(pki, tmp_path, flags, words):
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    paths = {"cert": pki.gateway.cert, "key": pki.gateway.key, "other_key": pki.client.key,
             "text": tmp_path / "notes.txt"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "--grpc-port=0", "--http-port=0",
                           *(f.format(**paths) for f in flags)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
