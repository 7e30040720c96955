"""Model lifecycle of `python -m serving`: new versions dropped into the base path are picked up
while clients keep calling, a corrupt version leaves the old one serving, and SIGTERM drains
in-flight requests before the process exits 0. Every wait is on a condition seen over the wire
(model status, metrics, the log), never a fixed sleep.
"""

from __future__ import annotations

import shutil
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from tools import stack
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END

pytestmark = pytest.mark.slow


def _request(rows: int = 2, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fashion"
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    images = np.random.default_rng(rows).integers(0, 256, size=(rows, 28, 28, 1), dtype=np.uint8)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def _statuses(channel) -> dict[int, tuple[int, int, str]]:
    """version -> (state, error code, error message)."""
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion"}), timeout=10)
    return {s.version: (s.state, s.status.error_code, s.status.error_message) for s in answer.model_version_status}


def _drop_in(source: Path, base: Path, version: int) -> None:
    """Deploy a version as a careful operator does: copy under a hidden name, then rename."""
    staging = base / f".tmp-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def base(tiny_models_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("lifecycle") / "fashion"
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "1")
    return base


@pytest.fixture(scope="module")
def server(base):
    srv = stack.start_model_server(model_name="fashion", model_base_path=base,
                                   extra_args=["--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"])
    yield srv
    srv.process.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def test_new_version_is_served_while_a_concurrent_load_sees_no_failure(server, channel, base):
    stop = threading.Event()
    served: list[int] = []
    failures: list[str] = []

    def client() -> None:
        with grpc.insecure_channel(server.grpc_target) as own:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(own)
            while not stop.is_set():
                try:
                    served.append(stub.Predict(_request(), timeout=30).model_spec.version.value)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(served) >= 20, 60, "the load to flow")
        _drop_in(base / "1", base, 2)
        wait_until(lambda: _statuses(channel) == {2: (AVAILABLE, 0, ""), 1: (END, 0, "")}, 120,
                  "version 2 AVAILABLE and version 1 unloaded")
        switched = len(served)
        wait_until(lambda: served[switched:].count(2) >= 20, 60, "requests answered by version 2")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert failures == []
    assert 1 in served and 2 in served
    assert set(served[switched:]) == {2}


def test_corrupt_version_is_skipped_and_the_old_one_keeps_serving(server, channel, base):
    live = max(version for version, (state, _, _) in _statuses(channel).items() if state == AVAILABLE)
    corrupt = live + 1
    staging = base / f".tmp-{corrupt}"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"\x00 this is not a SavedModel \xff" * 50)
    staging.rename(base / str(corrupt))

    def failed() -> dict | None:
        statuses = _statuses(channel)
        return statuses if corrupt in statuses and statuses[corrupt][0] == END else None

    statuses = wait_until(failed, 120, f"version {corrupt} to fail")

    state, error_code, message = statuses[corrupt]
    assert error_code != 0 and message
    assert statuses[live][0] == AVAILABLE
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert stub.Predict(_request(), timeout=30).model_spec.version.value == live
    with urllib.request.urlopen(f"{server.rest_url}/v1/models/fashion", timeout=10) as resp:
        assert resp.status == 200


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_models_dir, tmp_path):
    base = tmp_path / "fashion"
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "1")
    # A lone request waits batch_timeout_micros (3 s) for company: in flight when SIGTERM comes.
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 3000000 }\n")
    srv = stack.start_model_server(
        model_name="fashion", model_base_path=base,
        extra_args=["--enable_batching", f"--batching_parameters_file={batching}",
                    f"--monitoring_config_file={ROOT / 'serving' / 'monitoring.config'}",
                    "--shutdown_grace_period_seconds=10"])
    try:
        outcome: dict = {}

        def in_flight() -> None:
            with grpc.insecure_channel(srv.grpc_target) as own:
                try:
                    outcome["version"] = prediction_service_pb2_grpc.PredictionServiceStub(own).Predict(
                        _request(1), timeout=30).model_spec.version.value
                except grpc.RpcError as exc:
                    outcome["error"] = f"{exc.code()}: {exc.details()}"

        thread = threading.Thread(target=in_flight, daemon=True)
        thread.start()
        wait_until(lambda: 'serving_requests_in_flight{entrypoint="GRPC"} 1.0' in _metrics(srv), 30,
                  "the request to be in flight")

        srv.process.signal(signal.SIGTERM)
        wait_until(lambda: "Received a stop signal" in srv.process.output(200), 30, "the server to start draining")
        with grpc.insecure_channel(srv.grpc_target) as late:
            with pytest.raises(grpc.RpcError) as refused:
                prediction_service_pb2_grpc.PredictionServiceStub(late).Predict(_request(1), timeout=5)
        thread.join(30)

        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert outcome == {"version": 1}
        assert srv.process.proc.wait(30) == 0
    finally:
        srv.process.stop()


def _metrics(srv) -> str:
    with urllib.request.urlopen(f"{srv.rest_url}/monitoring/prometheus/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_model_config_file_is_polled_for_new_models(tiny_models_dir, tmp_path):
    for name in ("fashion", "fashion_b"):
        shutil.copytree(tiny_models_dir / "fashion" / "1", tmp_path / name / "1")
    entry = 'config {{ name: "{0}" base_path: "{1}/{0}" model_platform: "tensorflow" }}'
    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ {entry.format('fashion', tmp_path)} }}")
    srv = stack.start_model_server(model_config_file=config, models=["fashion"],
                                   extra_args=["--model_config_file_poll_wait_seconds=1"])
    try:
        staging = tmp_path / "models.config.new"
        staging.write_text(f"model_config_list {{ {entry.format('fashion', tmp_path)} "
                           f"{entry.format('fashion_b', tmp_path)} }}")
        staging.rename(config)

        def fashion_b_available() -> bool:
            try:
                with urllib.request.urlopen(f"{srv.rest_url}/v1/models/fashion_b", timeout=10) as resp:
                    return b'"AVAILABLE"' in resp.read()
            except urllib.error.HTTPError:
                return False

        wait_until(fashion_b_available, 120, "the model added to the config file to be AVAILABLE")
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = _request()
            request.model_spec.name = "fashion_b"
            assert stub.Predict(request, timeout=30).model_spec.name == "fashion_b"
    finally:
        srv.process.stop()
