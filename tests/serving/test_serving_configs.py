"""The real server's configs (`serving/*.config`), its launcher `serving/run.sh`, and the command
line of `python -m serving`: flags as tensorflow_model_server takes them, and start-up failures
reported as it reports them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving import configs, flags
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "serving"


# --- flags --------------------------------------------------------------------------------------

def test_flags_take_tf_serving_syntax():
    options = flags.parse(["--port=9000", "--rest_api_port=0", "--model_name=fashion", "--enable_batching",
                           "--enable_model_warmup=false", "--file_system_poll_wait_seconds=5"])

    assert (options.port, options.rest_api_port, options.model_name) == (9000, 0, "fashion")
    assert options.enable_batching is True and options.enable_model_warmup is False
    assert options.file_system_poll_wait_seconds == 5


def test_flags_defaults_are_tf_serving_defaults():
    options = flags.parse([])

    assert (options.port, options.model_name, options.file_system_poll_wait_seconds) == (8500, "default", 1)
    assert (options.enable_batching, options.rest_api_timeout_in_ms, options.max_num_load_retries) == (False, 30000, 5)
    assert options.bind_address == "127.0.0.1"


def test_real_flags_without_effect_and_unknown_flags_only_warn(caplog):
    options = flags.parse(["--grpc_max_threads=8", "--no_such_flag=1", "--port=1234"])

    assert options.port == 1234
    assert "--grpc_max_threads is accepted for compatibility" in caplog.text
    assert "unknown argument: --no_such_flag=1" in caplog.text


@pytest.mark.parametrize("argv", [["--port=eight"], ["--enable_batching=maybe"], ["--model_base_path"]])
def test_bad_flag_values_are_errors(argv):
    with pytest.raises(flags.FlagError):
        flags.parse(argv)


def test_help_lists_every_flag_with_its_default():
    result = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)

    assert result.returncode == 0
    assert "--file_system_poll_wait_seconds=1" in result.stdout
    assert "--bind_address='127.0.0.1'" in result.stdout


# --- serving/*.config ---------------------------------------------------------------------------

def test_models_config_serves_fashion_with_labels_from_the_container_path():
    config = configs.read_text_proto(str(SERVING / "models.config"), model_server_config_pb2.ModelServerConfig())
    configs.validate_model_server_config(config)

    (fashion,) = config.model_config_list.config
    assert (fashion.name, fashion.base_path, fashion.model_platform) == ("fashion", "/models/fashion", "tensorflow")
    assert set(fashion.version_labels) == {"stable", "canary"}
    assert fashion.model_version_policy.WhichOneof("policy_choice") == "latest"


def test_batching_and_monitoring_configs_parse_and_validate():
    options = flags.parse(["--enable_batching", f"--batching_parameters_file={SERVING / 'batching.config'}",
                           f"--monitoring_config_file={SERVING / 'monitoring.config'}"])

    batching = configs.batching_settings(options)
    monitoring = configs.monitoring_settings(options)

    assert batching.max_batch_size == 32 and batching.allowed_batch_sizes[-1] == 32
    assert 0 < batching.batch_timeout_micros <= 10_000
    assert monitoring.prometheus_enabled and monitoring.prometheus_path == "/monitoring/prometheus/metrics"


def test_invalid_batching_parameters_are_refused(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")

    with pytest.raises(configs.ConfigError, match="must equal max_batch_size"):
        configs.batching_settings(flags.parse(["--enable_batching", f"--batching_parameters_file={path}"]))
    path.write_text("max_batch_size { value: 16 }\nno_such_field: 1\n")
    with pytest.raises(configs.ConfigError, match="no_such_field"):
        configs.batching_settings(flags.parse(["--enable_batching", f"--batching_parameters_file={path}"]))


# --- start-up failures and the launcher (real processes) ----------------------------------------

def _run_server(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving", "--port=0", "--rest_api_port=0", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_unloadable_initial_model_fails_start_up(tmp_path):
    (tmp_path / "fashion" / "1").mkdir(parents=True)
    (tmp_path / "fashion" / "1" / "saved_model.pb").write_bytes(b"garbage")

    result = _run_server("--model_name=fashion", f"--model_base_path={tmp_path / 'fashion'}",
                         "--max_num_load_retries=0")

    assert result.returncode == 1
    assert "Failed to start server. Error:" in result.stderr
    assert "did not become available" in result.stderr


@pytest.mark.slow
def test_labels_at_start_up_need_the_allow_flag_as_in_tf_serving(tiny_models_dir, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(SERVING.joinpath("models.config").read_text().replace("/models/", f"{tiny_models_dir}/"))

    result = _run_server(f"--model_config_file={config}")

    assert result.returncode == 1
    assert "Request to assign label to version 1 of model fashion" in result.stderr


_GRPC_PORT = re.compile(r"Running gRPC ModelServer at [^:\s]+:(\d+)")
_REST_PORT = re.compile(r"Exporting HTTP/REST API at:[^:\s]+:(\d+)")


def _port(pattern: re.Pattern):
    def match(line: str) -> int | None:
        found = pattern.search(line)
        return int(found.group(1)) if found else None
    return match


@pytest.mark.slow
def test_run_sh_falls_back_to_python_serving_with_the_repository_configs(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "fashion", models / "fashion")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (Path(p) / "tensorflow_model_server").exists())
    env = dict(os.environ, MODELS_DIR=str(models), GRPC_PORT="0", REST_PORT="0", PATH=path,
               PYTHON=sys.executable, TMPDIR=str(tmp_path))
    process = stack.ManagedProcess("run.sh", [str(SERVING / "run.sh")], env=env)
    process.watch("grpc", _port(_GRPC_PORT))
    process.watch("rest", _port(_REST_PORT))
    process.start()
    try:
        ports = process.wait_for(["grpc", "rest"], timeout=120)
        rest = f"http://127.0.0.1:{ports['rest']}"
        with urllib.request.urlopen(f"{rest}/v1/models/fashion/labels/stable", timeout=10) as resp:
            status = json.loads(resp.read())
        body = json.dumps({"instances": [[[[0]] * 28] * 28]}).encode()
        with urllib.request.urlopen(f"{rest}/v1/models/fashion/labels/canary:predict", body, timeout=30) as resp:
            predictions = json.loads(resp.read())["predictions"]
        with urllib.request.urlopen(f"{rest}/monitoring/prometheus/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        assert process.stop() == 0

    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(predictions) == 1
    # batching.config is in effect: the one-row request ran padded to the smallest allowed batch size.
    assert ':tensorflow:serving:batching_session:processed_batch_size_sum{thread_pool_name="model_server_batch_threads"} 8.0' in metrics
    assert ':tensorflow:serving:request_count{model_name="fashion",status="OK"} 1.0' in metrics
    assert "tensorflow_model_server not on PATH; running python -m serving" in process.output(400)


@pytest.mark.slow
def test_ssl_config_file_puts_grpc_behind_tls(tiny_models_dir, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
    cert = (tmp_path / "cert.pem").read_text()
    # As TF Serving takes it: an SSLConfig text proto with the PEM contents inline.
    (tmp_path / "ssl.config").write_text(f"server_key: {json.dumps((tmp_path / 'key.pem').read_text())}\n"
                                         f"server_cert: {json.dumps(cert)}\n")
    shutil.copytree(tiny_models_dir / "fashion", tmp_path / "fashion")
    srv = stack.start_model_server(model_name="fashion", model_base_path=tmp_path / "fashion",
                                   extra_args=[f"--ssl_config_file={tmp_path / 'ssl.config'}"])
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion"})
    try:
        credentials = grpc.ssl_channel_credentials(cert.encode())
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", credentials) as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        with grpc.insecure_channel(srv.grpc_target) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                model_service_pb2_grpc.ModelServiceStub(plaintext).GetModelStatus(request, timeout=5)
    finally:
        srv.process.stop()

    assert status.model_version_status[0].version == 1
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
