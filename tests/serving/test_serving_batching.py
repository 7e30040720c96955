"""Server-side batching of `python -m serving` (`--enable_batching`), observed through TF Serving's
batching metrics: concurrent requests coalesce into one model call, a full queue refuses work
with UNAVAILABLE, a request larger than a batch is split, and results stay those of the model.

Batching parameters: batches of up to 8 rows, a batch waits up to 3 s for company, at most 3
batches wait, one batch runs at a time.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tools import stack

ROOT = Path(__file__).resolve().parents[2]
BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 3000000 }
max_enqueued_batches { value: 3 }
num_batch_threads { value: 1 }
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("batching")
    shutil.copytree(tiny_models_dir / "fashion" / "1", workdir / "fashion" / "1")
    (workdir / "batching.config").write_text(BATCHING)
    srv = stack.start_model_server(
        model_name="fashion", model_base_path=workdir / "fashion",
        extra_args=["--enable_batching", f"--batching_parameters_file={workdir / 'batching.config'}",
                    f"--monitoring_config_file={ROOT / 'serving' / 'monitoring.config'}"])
    yield srv
    srv.process.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def reference(tiny_models_dir):
    return tf.saved_model.load(str(tiny_models_dir / "fashion" / "1")).signatures["serving_default"]


def _images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, 28, 28, 1), dtype=np.uint8)


def _request(images: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fashion"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


PROCESSED = ":tensorflow:serving:batching_session:processed_batch_size"


def test_concurrent_requests_are_coalesced_into_one_batch(server, stub, reference):
    batches_before = _metric(server, PROCESSED + "_count")
    rows_before = _metric(server, PROCESSED + "_sum")
    images = [_images(1, seed) for seed in range(8)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda one: stub.Predict(_request(one), timeout=30), images))

    assert _metric(server, PROCESSED + "_count") - batches_before == 1
    assert _metric(server, PROCESSED + "_sum") - rows_before == 8
    for one, response in zip(images, responses):
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                                   reference(images=tf.constant(one))["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_full_queue_refuses_with_unavailable(server, stub):
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # One row opens a batch that waits (up to 3 s) for company; two full batches queue behind it.
        waiting = [pool.submit(stub.Predict, _request(_images(1, 0)), timeout=30)]
        waiting += [pool.submit(stub.Predict, _request(_images(8, n)), timeout=30) for n in (1, 2)]
        _wait_queued(server, tasks=3)

        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(_request(_images(8, 3)), timeout=30)

        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue" in refused.value.details()
        assert all(future.result().outputs["scores"].tensor_shape.dim[0].size in (1, 8) for future in waiting)


def test_request_larger_than_a_batch_is_split_and_reassembled(stub, reference):
    images = _images(20, 5)

    response = stub.Predict(_request(images), timeout=30)

    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                               reference(images=tf.constant(images))["scores"].numpy(), rtol=1e-5, atol=1e-6)


def _wait_queued(server, tasks: int) -> None:
    deadline = time.monotonic() + 30
    while _metric(server, 'serving_batch_queue_tasks{model_name="fashion"}') < tasks:
        assert time.monotonic() < deadline, f"{tasks} requests never queued"
        time.sleep(0.02)  # polling the server's metrics: nothing local to wait on
