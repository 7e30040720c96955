"""`python -m serving` over the wire: the official TF Serving gRPC client and plain HTTP.

One server for the module, started from a model config file the way a deployment starts it:
model `fashion` with versions 1 and 2 (2 is a copy of the trained 1) labelled stable=1 and
canary=2, and a second model `fashion_copy`; gRPC health checking and Prometheus metrics on.
Every answer is compared with the SavedModel called in this process, and every error with the
status code TensorFlow Serving gives for it.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2
from google.protobuf import text_format

from tools import stack

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = """
model_config_list {{
  config {{
    name: "fashion"
    base_path: "{base}/fashion"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "fashion_copy"
    base_path: "{base}/fashion_copy"
    model_platform: "tensorflow"
  }}
}}
"""


@pytest.fixture(scope="module")
def models_base(tiny_models_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("api-models")
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "fashion" / "1")
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "fashion" / "2")
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "fashion_copy" / "1")
    return base


@pytest.fixture(scope="module")
def server(models_base, tmp_path_factory):
    config = tmp_path_factory.mktemp("api-config") / "models.config"
    config.write_text(MODEL_CONFIG.format(base=models_base))
    srv = stack.start_model_server(
        model_config_file=config, models=["fashion", "fashion_copy"],
        extra_args=["--allow_version_labels_for_unavailable_models=true", "--enable_grpc_healthcheck_service",
                    f"--monitoring_config_file={ROOT / 'serving' / 'monitoring.config'}"])
    yield srv
    srv.process.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def reference(models_base):
    """The SavedModel's signatures, called in this process."""
    return tf.saved_model.load(str(models_base / "fashion" / "1")).signatures


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)


def _request(images: np.ndarray | None = None, *, model: str = "fashion", signature: str = "",
             version: int | None = None, label: str | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if images is not None:
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def _expected(reference, images: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reference["serving_default"](images=tf.constant(images)).items()}


def _http(server, method: str, path: str, body: bytes | str | None = None) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


# --- Predict over gRPC -------------------------------------------------------------------------

def test_grpc_predict_equals_in_process_model(predict_stub, reference, images):
    response = predict_stub.Predict(_request(images), timeout=30)

    expected = _expected(reference, images)
    scores = tf.make_ndarray(response.outputs["scores"])
    classes = tf.make_ndarray(response.outputs["classes"])
    np.testing.assert_allclose(scores, expected["scores"], rtol=1e-5, atol=1e-6)
    assert (classes == expected["classes"]).all()
    # As TF Serving: typed value fields, and the model spec actually used echoed back.
    assert len(response.outputs["scores"].float_val) == scores.size and not response.outputs["scores"].tensor_content
    assert response.model_spec.name == "fashion"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_predict_accepts_typed_values(predict_stub, reference, images):
    request = _request()
    tensor = request.inputs["images"]
    tensor.dtype = tf.uint8.as_datatype_enum
    for size in images[:2].shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.int_val.extend(images[:2].ravel().tolist())

    response = predict_stub.Predict(request, timeout=30)

    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                               _expected(reference, images[:2])["scores"], rtol=1e-5, atol=1e-6)


def test_grpc_output_filter_returns_only_the_named_outputs(predict_stub, images):
    request = _request(images)
    request.output_filter.append("scores")

    response = predict_stub.Predict(request, timeout=30)

    assert list(response.outputs) == ["scores"]


@pytest.mark.parametrize("version,label,served", [(1, None, 1), (2, None, 2), (None, "stable", 1),
                                                  (None, "canary", 2), (None, None, 2)])
def test_grpc_version_and_label_choose_the_version(predict_stub, images, version, label, served):
    response = predict_stub.Predict(_request(images[:1], version=version, label=label), timeout=30)

    assert response.model_spec.version.value == served


def test_grpc_image_bytes_signature_decodes_in_the_graph(predict_stub, reference, images):
    encoded = [_png(image) for image in images[:3]]
    request = _request(signature="image_bytes")
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(encoded))

    response = predict_stub.Predict(request, timeout=30)

    expected = reference["image_bytes"](image_bytes=tf.constant(encoded))["scores"].numpy()
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), expected, rtol=1e-5, atol=1e-6)
    assert response.model_spec.signature_name == "image_bytes"


def test_second_model_of_the_config_file_is_served(predict_stub, model_stub, images):
    response = predict_stub.Predict(_request(images[:1], model="fashion_copy"), timeout=30)

    assert response.model_spec.name == "fashion_copy"
    status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion_copy"}))
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


# --- Predict over REST -------------------------------------------------------------------------

def test_rest_row_and_columnar_formats_equal_in_process_model(server, reference, images):
    expected = _expected(reference, images)

    status, rows = _http(server, "POST", "/v1/models/fashion:predict", json.dumps({"instances": images.tolist()}))
    assert status == 200
    np.testing.assert_allclose([p["scores"] for p in rows["predictions"]], expected["scores"], rtol=1e-5, atol=1e-6)
    assert [p["classes"] for p in rows["predictions"]] == [[c.decode() for c in row] for row in expected["classes"]]

    status, columns = _http(server, "POST", "/v1/models/fashion:predict", json.dumps({"inputs": images.tolist()}))
    assert status == 200
    np.testing.assert_allclose(columns["outputs"]["scores"], expected["scores"], rtol=1e-5, atol=1e-6)


def test_rest_b64_strings_reach_the_image_bytes_signature(server, reference, images):
    encoded = [_png(image) for image in images[:2]]
    body = {"signature_name": "image_bytes",
            "instances": [{"b64": base64.b64encode(e).decode()} for e in encoded]}

    status, answer = _http(server, "POST", "/v1/models/fashion/labels/stable:predict", json.dumps(body))

    assert status == 200
    expected = reference["image_bytes"](image_bytes=tf.constant(encoded))["scores"].numpy()
    np.testing.assert_allclose([p["scores"] for p in answer["predictions"]], expected, rtol=1e-5, atol=1e-6)


def test_rest_version_path_and_model_status(server, images):
    status, _ = _http(server, "POST", "/v1/models/fashion/versions/1:predict",
                      json.dumps({"instances": images[:1].tolist()}))
    assert status == 200

    status, body = _http(server, "GET", "/v1/models/fashion")
    assert status == 200
    assert body["model_version_status"] == [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    status, body = _http(server, "GET", "/v1/models/fashion/labels/stable")  # as TF Serving: label ignored
    assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]


# --- metadata and status -----------------------------------------------------------------------

def test_metadata_is_the_saved_models_signature_defs(server, predict_stub, models_base):
    saved_model = saved_model_pb2.SavedModel.FromString((models_base / "fashion" / "1" / "saved_model.pb").read_bytes())
    expected = dict(saved_model.meta_graphs[0].signature_def)

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "fashion"
    response = predict_stub.GetModelMetadata(request, timeout=30)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    assert dict(signature_defs.signature_def) == expected
    assert response.model_spec.version.value == 2
    images_input = signature_defs.signature_def["serving_default"].inputs["images"]
    assert images_input.dtype == tf.uint8.as_datatype_enum
    assert {"scores", "classes"} <= set(signature_defs.signature_def["serving_default"].outputs)

    status, body = _http(server, "GET", "/v1/models/fashion/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "fashion", "signature_name": "", "version": "1"}
    assert set(body["metadata"]["signature_def"]["signature_def"]) == set(expected)
    rest_input = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["images"]
    assert rest_input["dtype"] == "DT_UINT8"


def test_grpc_model_status_reports_every_version(model_stub):
    status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion"}))

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (2, available, 0), (1, available, 0)]


# --- errors: the codes TF Serving gives --------------------------------------------------------

def _grpc_error(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code()


def _bad_requests(images: np.ndarray) -> dict[str, tuple[predict_pb2.PredictRequest, grpc.StatusCode]]:
    wrong_dtype = _request(images.astype(np.float32))
    wrong_shape = _request(images[:, :, :, 0])
    missing_input = _request()
    extra_input = _request(images)
    extra_input.inputs["extra"].CopyFrom(tf.make_tensor_proto([1]))
    bad_filter = _request(images)
    bad_filter.output_filter.append("nope")
    truncated = _request(images)
    truncated.inputs["images"].tensor_content = truncated.inputs["images"].tensor_content[:-1]
    no_spec = predict_pb2.PredictRequest()
    no_spec.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return {
        "wrong dtype": (wrong_dtype, invalid),
        "wrong shape": (wrong_shape, invalid),
        "missing input": (missing_input, invalid),
        "extra input": (extra_input, invalid),
        "unknown output in output_filter": (bad_filter, invalid),
        "tensor_content too short": (truncated, invalid),
        "no model_spec": (no_spec, invalid),
        "unknown model": (_request(images, model="nope"), not_found),
        "unknown version": (_request(images, version=7), not_found),
        "unknown label": (_request(images, label="nope"), invalid),
        "unknown signature": (_request(images, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION),
    }


BAD_GRPC_CASES = ["wrong dtype", "wrong shape", "missing input", "extra input", "unknown output in output_filter",
                  "tensor_content too short", "no model_spec", "unknown model", "unknown version", "unknown label",
                  "unknown signature"]


@pytest.mark.parametrize("case", BAD_GRPC_CASES)
def test_grpc_bad_requests_get_tf_serving_codes(predict_stub, images, case):
    request, code = _bad_requests(images)[case]

    assert _grpc_error(predict_stub.Predict, request) == code


def test_grpc_bad_requests_outside_predict(predict_stub, model_stub):
    assert _grpc_error(predict_stub.Classify, classification_pb2.ClassificationRequest(  # a Predict signature
        model_spec={"name": "fashion"})) == grpc.StatusCode.INVALID_ARGUMENT
    no_fields = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "fashion"})
    assert _grpc_error(predict_stub.GetModelMetadata, no_fields) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"})
    assert _grpc_error(model_stub.GetModelStatus, unknown) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method,path,body,http_status", [
    ("POST", "/v1/models/fashion:predict", "{not json", 400),
    ("POST", "/v1/models/fashion:predict", "", 400),
    ("POST", "/v1/models/fashion:predict", '{"instances": [1, 2]}', 400),
    ("POST", "/v1/models/fashion:predict", '{"instances": [[[["a"]]]]}', 400),
    ("POST", "/v1/models/fashion:predict", '{"instances": [[1]], "inputs": [[1]]}', 400),
    ("POST", "/v1/models/fashion:predict", '{"signature_name": "nope", "instances": [1]}', 400),
    ("POST", "/v1/models/fashion:predict", '{"signature_name": 3, "instances": [1]}', 400),
    ("POST", "/v1/models/nope:predict", '{"instances": [1]}', 404),
    ("POST", "/v1/models/fashion/versions/7:predict", '{"instances": [1]}', 404),
    ("POST", "/v1/models/fashion/labels/nope:predict", '{"instances": [1]}', 400),
    ("POST", "/v1/models/fashion:classify", '{"examples": [{"x": 1}]}', 400),
    ("POST", "/v1/models/fashion:explode", "{}", 400),
    ("GET", "/v1/models/nope", None, 404),
    ("GET", "/v1/models/fashion/versions/7", None, 404),
    ("GET", "/v1/models", None, 400),
])
def test_rest_bad_requests_get_tf_serving_statuses(server, method, path, body, http_status):
    status, answer = _http(server, method, path, body)

    assert status == http_status
    assert isinstance(answer["error"], str) and answer["error"]


# --- health, metrics, config reload ------------------------------------------------------------

def test_grpc_health_reports_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_prometheus_metrics_use_tf_serving_names(server, predict_stub, images):
    predict_stub.Predict(_request(images[:1]), timeout=30)
    with pytest.raises(grpc.RpcError):
        predict_stub.Predict(_request(images[:1], version=7), timeout=30)

    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=10) as resp:
        text = resp.read().decode()

    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples[':tensorflow:serving:request_count{model_name="fashion",status="OK"}']) >= 1
    assert float(samples[':tensorflow:serving:request_count{model_name="fashion",status="NOT_FOUND"}']) >= 1
    assert float(samples[':tensorflow:serving:request_latency_count{model_name="fashion",API="Predict",'
                         'entrypoint="GRPC",status="OK"}']) >= 1
    assert 'serving_requests_in_flight{entrypoint="GRPC"}' in samples
    assert "# TYPE :tensorflow:serving:request_count counter" in text


def _model_server_config(models_base: Path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(MODEL_CONFIG.format(base=models_base), model_server_config_pb2.ModelServerConfig())


def test_reload_config_moves_a_label_and_refuses_unavailable_versions(model_stub, predict_stub, models_base, images):
    config = _model_server_config(models_base)
    fashion = config.model_config_list.config[0]

    fashion.version_labels["canary"] = 1
    model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
    try:
        assert predict_stub.Predict(_request(images[:1], label="canary"), timeout=30).model_spec.version.value == 1

        fashion.version_labels["stable"] = 9
        refused = model_management_pb2.ReloadConfigRequest(config=config)
        assert _grpc_error(model_stub.HandleReloadConfigRequest, refused) == grpc.StatusCode.FAILED_PRECONDITION
        assert predict_stub.Predict(_request(images[:1], label="stable"), timeout=30).model_spec.version.value == 1
    finally:
        original = model_management_pb2.ReloadConfigRequest(config=_model_server_config(models_base))
        model_stub.HandleReloadConfigRequest(original, timeout=60)


def test_signatures_run_without_retracing(models_base):
    """The server's call path (LoadedModel -> Signature) adds no functions for new batch sizes."""
    from tensorflow.python.eager import context

    from serving.savedmodel import LoadedModel

    signature = LoadedModel.load(models_base / "fashion" / "1", frozenset({"serve"})).signature("serving_default")
    signature({"images": np.zeros((1, 28, 28, 1), np.uint8)})
    functions = len(context.context().list_function_names())

    for rows in (2, 7, 32):
        assert signature({"images": np.zeros((rows, 28, 28, 1), np.uint8)})["scores"].shape[0] == rows

    assert len(context.context().list_function_names()) == functions
