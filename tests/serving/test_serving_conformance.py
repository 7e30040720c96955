"""`python -m serving` held to TensorFlow Serving's own test cases.

Every case below is ported from a file of github.com/tensorflow/serving, named in the case's id
(REST tables) or comment: `model_servers/http_rest_api_handler_test.cc`, `util/json_tensor_test.cc`,
`model_servers/tensorflow_model_server_test.py`, `g3doc/api_rest.md`, and where those are silent the
sources they test (`util/json_tensor.cc`, `model_servers/http_server.cc`,
`model_servers/http_rest_api_util.cc`, `model_servers/get_model_status_impl.cc`,
`model_servers/server_core.cc`, `model_servers/server.cc`, `servables/tensorflow/classifier.cc`,
`regressor.cc`, `multi_inference.cc`, `predict_util.cc`, `get_model_metadata_impl.cc`).

Everything runs over the wire: REST with plain HTTP, gRPC with the official `tensorflow_serving.apis`
client, over TCP and over the UNIX socket. The main server is started with the flags TF Serving's
end-to-end test starts it with and serves `fashion` (versions 1 and 2, labels stable=1/canary=2)
and `half_plus_two` (version 123, label Version_Label): built here as TF Serving's test model is,
y = 0.5 x + 2 as Predict, Classify and Regress signatures, plus identity signatures per dtype and
the multi-input signatures json_tensor_test.cc converts into. A second server runs without
--rest_api_port and with --enable_signature_method_name_check; a third is given a broken config.
Where python -m serving differs on purpose, README.md ("Model server") lists it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import flags
from tools import stack
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
H = "/v1/models/half_plus_two"
F = "/v1/models/fashion"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _model_config(base: Path, half: str = "half_plus_two") -> str:
    """fashion (every version, stable=1, canary=2) and half_plus_two (or a copy under the name `half`)."""
    config = model_server_config_pb2.ModelServerConfig()
    fashion = config.model_config_list.config.add(name="fashion", base_path=f"{base}/fashion",
                                                  model_platform="tensorflow")
    fashion.model_version_policy.all.SetInParent()
    fashion.version_labels.update({"stable": 1, "canary": 2})
    second = config.model_config_list.config.add(name=half, base_path=f"{base}/{half}", model_platform="tensorflow")
    second.version_labels["Version_Label"] = 123
    return text_format.MessageToString(config)


# --- the models -----------------------------------------------------------------------------------

def _signature(inputs: dict[str, tf.DType], fn, shape=None) -> tf.types.experimental.ConcreteFunction:
    specs = [tf.TensorSpec(shape=shape, dtype=dtype, name=name) for name, dtype in inputs.items()]
    return tf.function(lambda *args: fn(**dict(zip(inputs, args))), input_signature=specs).get_concrete_function()


def _identity(inputs: dict[str, tf.DType], suffix: str = "") -> tf.types.experimental.ConcreteFunction:
    return _signature(inputs, lambda **tensors: {name + suffix: tf.identity(t) for name, t in tensors.items()})


def _build_half_plus_two(path: Path) -> None:
    """TF Serving's half_plus_two test model, and the signatures json_tensor_test.cc converts into."""
    def parse_x(inputs):
        return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    examples = {"inputs": tf.string}
    signatures = {
        "serving_default": _signature({"x": tf.float32}, lambda x: {"y": 0.5 * x + 2.0}),
        "classify_x_to_y": _signature(examples, lambda inputs: {"scores": 0.5 * parse_x(inputs) + 2.0}, [None]),
        "regress_x_to_y": _signature(examples, lambda inputs: {"outputs": 0.5 * parse_x(inputs) + 2.0}, [None]),
        "string_bytes": _identity({"input": tf.string}, "_bytes"),
        "echo": _identity({"int_tensor": tf.int32, "str_tensor": tf.string, "float_tensor": tf.float32,
                           "dbl_tensor": tf.float64}),
        "named": _identity({"int_tensor": tf.int32, "str_tensor": tf.string}),
        "columnar": _identity({"int_tensor": tf.int32, "str_tensor": tf.string, "bin_tensor": tf.string}),
        "sum": _signature({"x": tf.float32}, lambda x: {"total": tf.reduce_sum(x)}, [None]),
        "uneven": _signature({"x": tf.float32}, lambda x: {"a": x, "b": tf.concat([x, x], 0)}, [None]),
        "no_inputs": tf.function(lambda: {"one": tf.constant(1.0)}, input_signature=[]).get_concrete_function(),
    }
    for dtype in ("int8", "int32", "int64", "uint8", "uint32", "uint64", "float32", "float64", "bool", "string",
                  "float16"):
        signatures[dtype] = _identity({"input": tf.as_dtype(dtype)})
    root = tf.Module()
    root.functions = list(signatures.values())
    tf.saved_model.save(root, str(path), signatures=signatures)


@pytest.fixture(scope="module")
def base(tiny_models_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("conformance")
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "fashion" / "1")
    shutil.copytree(tiny_models_dir / "fashion" / "1", base / "fashion" / "2")
    _build_half_plus_two(base / "half_plus_two" / "123")
    return base


_GRPC_PORT = re.compile(r"Running gRPC ModelServer at [^:\s]+:(\d+)")


def _grpc_port(line: str) -> int | None:
    found = _GRPC_PORT.search(line)
    return int(found.group(1)) if found else None


def _launch(name: str, *argv: str) -> stack.ManagedProcess:
    process = stack.ManagedProcess(name, [sys.executable, "-m", "serving", *argv])
    process.watch("grpc", _grpc_port)
    return process.start()


@pytest.fixture(scope="module")
def servers(base, tmp_path_factory):
    """The main server (TF Serving's e2e flags), one without REST, and one with a broken config."""
    work = tmp_path_factory.mktemp("conformance-run")
    config = work / "models.config"
    config.write_text(_model_config(base))
    only_half = work / "half.config"
    only_half.write_text('model_config_list { config { name: "half_plus_two" '
                         f'base_path: "{base}/half_plus_two" model_platform: "tensorflow" }} }}\n')
    broken = work / "broken.config"
    broken.write_text("model_config_list { config { name: 'x' base_path: '/nowhere' } \n garbage")
    socket_path = work / "tf-serving.sock"
    started: list[stack.ManagedProcess] = []
    try:
        # Started first, waited for last: the three processes import TensorFlow at the same time.
        started.append(_launch("bad-config", "--port=0", f"--model_config_file={broken}"))
        started.append(_launch("no-rest", "--port=0", f"--model_config_file={only_half}",
                               "--enable_signature_method_name_check", "--enable_grpc_healthcheck_service"))
        main = stack.start_model_server(
            model_config_file=config, models=["fashion", "half_plus_two"],
            extra_args=[
                # TF Serving's e2e test uses 5000; the slack is for a loaded CI machine.
                "--rest_api_timeout_in_ms=60000", f"--grpc_socket_path={socket_path}",
                "--model_config_file_poll_wait_seconds=1", "--allow_version_labels_for_unavailable_models",
                f"--monitoring_config_file={ROOT / 'serving' / 'monitoring.config'}",
                "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1"])
        started.append(main.process)
        no_rest_port = started[1].wait_for(["grpc"], timeout=120)["grpc"]
        yield SimpleNamespace(main=main, config=config, base=base, socket=socket_path, bad=started[0],
                              no_rest=started[1], no_rest_target=f"127.0.0.1:{no_rest_port}")
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def stubs(servers):
    """PredictionService and ModelService of the main server, over one TCP channel."""
    with grpc.insecure_channel(servers.main.grpc_target) as channel:
        yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model_service_pb2_grpc.ModelServiceStub(channel))


@pytest.fixture(scope="module")
def predict_stub(stubs):
    return stubs[0]


@pytest.fixture(scope="module")
def model_stub(stubs):
    return stubs[1]


# --- helpers --------------------------------------------------------------------------------------

def _http(servers, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(servers.main.rest_url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _check(status: int, raw: bytes, want_status: int, want) -> None:
    """`want`: the exact JSON answer (dict), or a text the error message contains (str)."""
    answer = json.loads(raw) if raw else None
    assert status == want_status, raw[:500]
    if isinstance(want, str):
        assert want in answer["error"], answer["error"][:500]
    elif want is not None:
        assert answer == want


def _predict_request(model: str = "half_plus_two", signature: str = "serving_default", **spec) -> predict_pb2.PredictRequest:
    """tensorflow_model_server_test_base.py VerifyPredictRequest: x = [2.0] for half_plus_two."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    if model == "fashion":
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.uint8)))
    else:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
    return request


def _examples(*xs: float) -> dict:
    return {"example_list": {"examples": [{"features": {"feature": {"x": {"float_list": {"value": [x]}}}}}
                                          for x in xs]}}


def _grpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


DEEP = 500_000


# --- REST: status, metadata, URLs -----------------------------------------------------------------

STATUS_123 = {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
BOTH_VERSIONS = {"model_version_status": [
    {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in (2, 1)]}

REST_URL_CASES = [
    pytest.param("GET", H, None, 200, STATUS_123, id="http_rest_api_handler_test.cc GetStatus"),
    pytest.param("GET", f"{H}/versions/123", None, 200, STATUS_123, id="http_rest_api_handler_test.cc GetStatus version"),
    pytest.param("GET", f"{H}/labels/Version_Label", None, 200, STATUS_123,
                 id="http_rest_api_handler_test.cc GetStatus label"),
    pytest.param("GET", f"{F}/labels/stable", None, 200, BOTH_VERSIONS,
                 id="get_model_status_impl.cc a label is ignored: every version"),
    pytest.param("GET", f"{F}/labels/nope", None, 200, BOTH_VERSIONS,
                 id="get_model_status_impl.cc an unknown label is ignored too"),
    pytest.param("GET", f"{F}/versions/7", None, 404, "Could not find version 7 of model fashion",
                 id="get_model_status_impl.cc unknown version"),
    pytest.param("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope",
                 id="get_model_status_impl.cc unknown model"),
    pytest.param("GET", f"{F}/METADATA", None, 200, BOTH_VERSIONS,
                 id="http_rest_api_handler.cc subresource compared case-sensitively"),
    pytest.param("GET", "/v1/models/fash%69on", None, 200, BOTH_VERSIONS,
                 id="http_rest_api_util.cc model name percent-decoded"),
    pytest.param("GET", f"{F}/labels/nope/metadata", None, 400, "Unrecognized servable version label: nope",
                 id="server_core.cc metadata for an unknown label"),
    pytest.param("GET", "/v1/foo", None, 400, "Malformed request", id="http_rest_api_handler_test.cc GET /v1/foo"),
    pytest.param("POST", "/v1/foo", "", 400, "Malformed request", id="http_rest_api_handler_test.cc POST /v1/foo"),
    pytest.param("GET", "/v1/models", None, 400, "Missing model name", id="http_rest_api_handler_test.cc GET /v1/models"),
    pytest.param("GET", "/v1/models/debug/model_name", None, 400, "Malformed request",
                 id="http_rest_api_handler_test.cc GET debug/model_name"),
    pytest.param("POST", "/v1/models", "", 400, "Malformed request", id="http_rest_api_handler_test.cc POST /v1/models"),
    pytest.param("GET", "/v1/models/foo:predict", None, 400, "Malformed request",
                 id="http_rest_api_handler_test.cc GET :predict"),
    pytest.param("GET", "/v1/models/foo/version/50:predict", None, 400, "Malformed request",
                 id="http_rest_api_handler_test.cc GET version/50:predict"),
    pytest.param("POST", "/v1/models/foo/version/50:regress", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc POST version/50:regress"),
    pytest.param("POST", "/v1/models/foo/versions/HELLO:regress", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc versions/HELLO"),
    pytest.param("POST", "/v1/models/foo/versions/18446744073709551615:regress", "", 400,
                 "Failed to convert version", id="http_rest_api_handler_test.cc uint64 max version"),
    pytest.param("GET", f"{F}/versions/18446744073709551615", None, 400,
                 "Failed to convert version: 18446744073709551615 to numeric.",
                 id="http_rest_api_util.cc uint64 max version in a status URL"),
    pytest.param("POST", "/v1/models/foo/metadata", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc POST metadata"),
    pytest.param("POST", "/v1/models/foo/label/some_label:regress", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc label/ (singular)"),
    pytest.param("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc version and label"),
    pytest.param("POST", "/v1/models/foo/versions/some_label:regress", "", 400, "Malformed request",
                 id="http_rest_api_handler_test.cc label as version"),
    pytest.param("POST", f"{F}:PREDICT", {"instances": [1]}, 400, "Malformed request: POST /v1/models/fashion:PREDICT",
                 id="http_rest_api_handler.cc verb compared case-sensitively"),
    pytest.param("PUT", F, "", 400, "Malformed request", id="http_rest_api_handler.cc other HTTP methods"),
    pytest.param("POST", "/v1/models/foo:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(foo)",
                 id="http_rest_api_handler_test.cc PredictModelNameVersionErrors unknown model"),
    pytest.param("POST", "/v1/models/foo/versions/50:predict", {"instances": [1]}, 404, "Specific(foo, 50)",
                 id="http_rest_api_handler_test.cc PredictModelNameVersionErrors unknown version"),
    pytest.param("POST", "/v1/models/half_plus_two99:predict", {"instances": [1]}, 404, "Servable not found",
                 id="http_rest_api_handler_test.cc PredictModelNameVersionErrors near name"),
    pytest.param("POST", f"{H}/labels/Version_Nonexistent:predict", {"instances": ["x", "y"]}, 400,
                 "Unrecognized servable version label", id="http_rest_api_handler_test.cc PredictRequestErrors label"),
]


@pytest.mark.parametrize("method,path,body,status,want", REST_URL_CASES)
def test_rest_urls_status_and_errors(servers, method, path, body, status, want):
    code, _, raw = _http(servers, method, path, body)

    _check(code, raw, status, want)


def test_rest_metadata_is_the_saved_models_signature_defs(servers):
    """http_rest_api_handler_test.cc GetModelMetadata, tensorflow_model_server_test.py testGetModelMetadataREST."""
    saved = saved_model_pb2.SavedModel.FromString((servers.base / "half_plus_two" / "123" / "saved_model.pb").read_bytes())
    expected = set(saved.meta_graphs[0].signature_def)

    code, headers, raw = _http(servers, "GET", f"{H}/metadata")
    answer = json.loads(raw)

    assert code == 200 and headers["content-type"] == "application/json"
    assert answer["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    assert set(answer["metadata"]["signature_def"]["signature_def"]) == expected
    regress = answer["metadata"]["signature_def"]["signature_def"]["regress_x_to_y"]
    assert regress["inputs"]["inputs"]["dtype"] == "DT_STRING"
    for path, version in ((f"{F}/labels/stable/metadata", "1"), (f"{F}/versions/2/metadata", "2"), (f"{F}/metadata", "2")):
        assert json.loads(_http(servers, "GET", path)[2])["model_spec"]["version"] == version


def test_rest_paths_match_case_insensitively(servers):
    """http_rest_api_util.cc: the path regexes are (?i); only the verb after ':' is compared as is."""
    code, _, raw = _http(servers, "POST", "/V1/Models/half_plus_two:predict", {"instances": [2.0]})

    _check(code, raw, 200, {"predictions": [3.0]})


def test_rest_paths_outside_v1_are_not_found(servers):
    """http_server.cc: only (?i)/v1/.* reaches the REST handler."""
    assert _http(servers, "GET", "/statuspage")[0] == 404


# --- REST: predict, classify, regress -------------------------------------------------------------

def _sig(name: str, key: str, value) -> dict:
    return {"signature_name": name, key: value}


PREDICT_CASES = [
    pytest.param(f"{H}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
                 id="http_rest_api_handler_test.cc Predict"),
    pytest.param(f"{H}/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]},
                 id="http_rest_api_handler_test.cc Predict version"),
    pytest.param(f"{H}/labels/Version_Label:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]},
                 id="http_rest_api_handler_test.cc Predict label"),
    pytest.param(f"{H}/versions/123:predict", _sig("serving_default", "instances", [3.0, 4.0]),
                 {"predictions": [3.5, 4.0]}, id="http_rest_api_handler_test.cc Predict signature"),
    pytest.param(f"{H}/versions/123:predict", _sig("serving_default", "inputs", [3.0, 4.0]),
                 {"outputs": [3.5, 4.0]}, id="http_rest_api_handler_test.cc Predict columnar"),
    pytest.param(f"{H}:predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]},
                 id="tensorflow_model_server_test.py testPredictREST"),
    pytest.param(f"{H}:predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]},
                 id="tensorflow_model_server_test.py testPredictColumnarREST"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [[1, 2], [3, 4], [5, 6]]),
                 {"predictions": [[1, 2], [3, 4], [5, 6]]}, id="json_tensor_test.cc SingleUnnamedTensor"),
    pytest.param(f"{H}:predict", _sig("float32", "instances", [1, 2.0, 3, 4, 5.003, 0.007, 0.0]),
                 {"predictions": [1.0, 2.0, 3.0, 4.0, 5.003, 0.007, 0.0]}, id="json_tensor_test.cc MixedInputForFloatTensor"),
    pytest.param(f"{H}:predict", _sig("float64", "instances", [1.0, 2, 3, 4, 0.662, 0, 0.0]),
                 {"predictions": [1.0, 2.0, 3.0, 4.0, 0.662, 0.0, 0.0]}, id="json_tensor_test.cc MixedInputForDoubleTensor"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [[1, 2]]), {"predictions": [[1, 2]]},
                 id="json_tensor_test.cc SingleUnnamedTensorWithSignature"),
    pytest.param(f"{H}:predict", _sig("string", "instances", [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]),
                 {"predictions": ["hello", "world"]}, id="json_tensor_test.cc SingleUnnamedTensorBase64Scalars"),
    pytest.param(f"{H}:predict", _sig("string", "instances", [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]),
                 {"predictions": [["hello"], ["world"]]}, id="json_tensor_test.cc SingleUnnamedTensorBase64Lists"),
    pytest.param(f"{H}:predict",
                 _sig("string", "instances", [{"input": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]),
                 {"predictions": [[["hello"], ["world"]]]}, id="json_tensor_test.cc SingleNamedTensorBase64"),
    pytest.param(f"{H}:predict", _sig("string", "instances", [{"b64": "aGVsbG8"}, {"b64": " d29y bGQ= "}]),
                 {"predictions": ["hello", "world"]}, id="json_tensor.cc base64 without padding or with spaces (absl)"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", {"input": [[[1, 2], [3, 4], [5, 6]]]}),
                 {"outputs": [[[1, 2], [3, 4], [5, 6]]]}, id="json_tensor_test.cc SingleUnnamedTensorColumnarFormat named"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", [[[1, 2], [3, 4], [5, 6]]]),
                 {"outputs": [[[1, 2], [3, 4], [5, 6]]]}, id="json_tensor_test.cc SingleUnnamedTensorColumnarFormat"),
    pytest.param(f"{H}:predict", _sig("columnar", "inputs", {"int_tensor": [[[1, 2], [3, 4], [5, 6]]],
                                                             "str_tensor": ["foo", "bar"],
                                                             "bin_tensor": {"b64": "aGVsbG8="}}),
                 {"outputs": {"int_tensor": [[[1, 2], [3, 4], [5, 6]]], "str_tensor": ["foo", "bar"],
                              "bin_tensor": "hello"}}, id="json_tensor_test.cc MultipleNamedTensorColumnarFormat"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", 5), {"outputs": 5},
                 id="json_tensor_test.cc FromJsonSingleScalarTensor"),
    pytest.param(f"{H}:predict", _sig("string_bytes", "instances", [{"b64": "aGVsbG8="}, "world"]),
                 {"predictions": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
                 id="json_tensor_test.cc FromJsonSingleBytesTensor (*_bytes outputs)"),
    pytest.param(f"{H}:predict", _sig("sum", "inputs", [1.0, 2.0]), {"outputs": 3.0},
                 id="json_tensor.cc columnar answers may be scalars"),
    pytest.param(f"{H}:predict", _sig("uint8", "instances", [0, 255, 300, -1]), {"predictions": [0, 255, 44, 255]},
                 id="json_tensor.cc int32 values into uint8 wrap as TensorFlow casts them"),
    pytest.param(f"{H}:predict", _sig("int64", "inputs", [-2**63, 2**63 - 1]), {"outputs": [-2**63, 2**63 - 1]},
                 id="json_tensor.cc int64 range"),
    pytest.param(f"{H}:predict", _sig("uint64", "inputs", [2**64 - 1]), {"outputs": [2**64 - 1]},
                 id="json_tensor.cc uint64 range"),
    pytest.param(f"{H}:predict", _sig("bool", "inputs", [True, False]), {"outputs": [True, False]},
                 id="json_tensor.cc bool"),
    pytest.param(f"{H}:predict", _sig("float32", "inputs", [1.7976931348623157e308, -1.7976931348623157e308]),
                 {"outputs": [math.inf, -math.inf]}, id="json_tensor_test.cc FloatTensorThatExceedsMaxReturnsInf"),
    pytest.param(f"{H}:predict", b'{"signature_name": "float32", "inputs": [Inf, -Inf, Infinity, -Infinity]}',
                 {"outputs": [math.inf, -math.inf, math.inf, -math.inf]}, id="json_tensor.cc rapidjson Inf tokens"),
    pytest.param(f"{H}:predict", b'{"instances": [[1,2],[3,4],[5,6]], "signature_name": "int32"}X',
                 {"predictions": [[1, 2], [3, 4], [5, 6]]},
                 id="json_tensor_test.cc TensorFromNonNullTerminatedBuffer (trailing bytes)"),
    pytest.param(f"{H}:predict", b'{"instances": [1.0], "instances": [2.0], "signature_name": "float32", '
                                 b'"signature_name": "int32"}', {"predictions": [1.0]},
                 id="json_tensor.cc duplicate keys: the first counts (FindMember)"),
    pytest.param(f"{H}:predict", b'\xef\xbb\xbf{"instances": [2.0]}', {"predictions": [3.0]},
                 id="json_tensor.cc rapidjson's UTF-8 stream skips a byte order mark"),
    pytest.param(f"{H}:predict", b'{"instances": [2.0], "nested": ' + b"[" * DEEP + b"]" * DEEP + b"}",
                 {"predictions": [3.0]}, id="json_tensor_test.cc DeeplyNestedWellFormed"),
    pytest.param(f"{H}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}, {"results": [42]},
                 id="http_rest_api_handler_test.cc Regress"),
    pytest.param(f"{H}/versions/123:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
                 {"results": [42]}, id="http_rest_api_handler_test.cc Regress version"),
    pytest.param(f"{H}/labels/Version_Label:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
                 {"results": [42]}, id="http_rest_api_handler_test.cc Regress label"),
    pytest.param(f"{H}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
                 {"results": [[["", 12]]]}, id="http_rest_api_handler_test.cc Classify"),
    pytest.param(f"{H}/labels/Version_Label:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
                 {"results": [[["", 7]]]}, id="http_rest_api_handler_test.cc Classify label"),
    pytest.param(f"{H}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
                 {"results": [[["", 3.0]]]}, id="tensorflow_model_server_test.py testClassifyREST"),
    pytest.param(f"{H}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}, {"results": [3.0]},
                 id="tensorflow_model_server_test.py testRegressREST"),
    pytest.param(f"{H}:regress", {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}]},
                 {"results": [3.0]}, id="json_tensor_test.cc RequestWithContextAndSignature"),
    pytest.param(f"{H}:regress", {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{"x": 4.0}]},
                 {"results": [4.0]}, id="util.cc context then example: the example's feature wins"),
]


@pytest.mark.parametrize("path,body,want", PREDICT_CASES)
def test_rest_predict_classify_regress(servers, path, body, want):
    code, headers, raw = _http(servers, "POST", path, body)

    _check(code, raw, 200, want)
    assert headers["content-type"] == "application/json"


def test_rest_multiple_named_tensors_with_non_finite_values(servers):
    """json_tensor_test.cc MultipleNamedTensor (and FromJsonSingleFloatTensorNonFinite on the way back)."""
    body = (b'{"signature_name": "echo", "instances": ['
            b'{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN], '
            b'"dbl_tensor": [NaN]},'
            b'{"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity], '
            b'"dbl_tensor": [2.0]}]}')

    code, _, raw = _http(servers, "POST", f"{H}:predict", body)

    assert code == 200, raw
    rows = json.loads(raw)["predictions"]
    assert [row["int_tensor"] for row in rows] == [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert [row["str_tensor"] for row in rows] == [["foo", "bar"], ["baz", "bat"]]
    assert rows[0]["float_tensor"][0] == 1.0 and math.isnan(rows[0]["float_tensor"][1])
    assert rows[1]["float_tensor"] == [2.0, math.inf]
    assert math.isnan(rows[0]["dbl_tensor"][0]) and rows[1]["dbl_tensor"] == [2.0]


def test_rest_float_precision(servers):
    """json_tensor_test.cc FloatTensorWithPrecisionLoss, FloatTensorThatExceedsMinReturnsZero,
    FromJsonSingleFloatTensorSixDigitPrecision: float32 values, written back in few digits."""
    body = _sig("float32", "instances", [1435774380, 1435774380.0, 2.2250738585072014e-308, -2.2250738585072014e-308,
                                         0.1])

    code, _, raw = _http(servers, "POST", f"{H}:predict", body)

    assert code == 200, raw
    values = json.loads(raw)["predictions"]
    assert np.float32(values[0]) == np.float32(values[1]) == np.float32(1435774380)
    assert values[2:4] == [0.0, 0.0] and math.copysign(1, values[3]) == -1
    assert b"0.1]" in raw and b"0.100000" not in raw


def test_rest_fashion_pixels_in_row_and_columnar_form(servers):
    """api_rest.md: the same uint8 images in both request formats give the same predictions, version chosen
    by label or number."""
    images = np.random.default_rng(19).integers(0, 256, size=(2, 28, 28, 1)).tolist()

    rows = json.loads(_http(servers, "POST", f"{F}/labels/stable:predict", {"instances": images})[2])["predictions"]
    columns = json.loads(_http(servers, "POST", f"{F}/versions/1:predict", {"inputs": images})[2])["outputs"]

    np.testing.assert_allclose([row["scores"] for row in rows], columns["scores"], rtol=1e-6)
    assert [row["classes"] for row in rows] == columns["classes"]


def test_rest_gzip_bodies_are_inflated(servers):
    """evhttp_request.cc (net_http): `Content-Encoding: gzip` bodies are inflated before parsing."""
    body = gzip.compress(json.dumps({"instances": [2.0]}).encode())
    gzip_header = {"Content-Encoding": "gzip"}

    code, _, raw = _http(servers, "POST", f"{H}:predict", body, gzip_header)
    broken, _, broken_raw = _http(servers, "POST", f"{H}:predict", b"not gzip", gzip_header)

    _check(code, raw, 200, {"predictions": [3.0]})
    _check(broken, broken_raw, 400, "JSON Parse error: The document is empty")


def _deep_signature_name() -> bytes:
    return b'{"signature_name": ' + b"[" * DEEP + b"]" * DEEP + b"}"


PREDICT_ERROR_CASES = [
    # (path, body, status, text in the error), json_tensor.cc's error paths in its order.
    pytest.param(f"{H}:predict", "", 400, "JSON Parse error: The document is empty",
                 id="http_rest_api_handler_test.cc PredictRequestErrors empty"),
    pytest.param(f"{H}:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value. at offset: 0",
                 id="http_rest_api_handler_test.cc PredictRequestErrors not JSON"),
    pytest.param(f"{H}:predict", {"instances": ["x", "y"]}, 400,
                 'JSON Value: "x" Type: String is not of expected type: float',
                 id="http_rest_api_handler_test.cc PredictRequestErrors type"),
    pytest.param(f"{H}:predict", {"signature_name": 100}, 400, "'signature_name' key must be a string value.",
                 id="http_rest_api_handler_test.cc PredictRequestErrors signature_name"),
    pytest.param(f"{H}:predict", _deep_signature_name(), 400, "key must be a string value",
                 id="json_tensor_test.cc DeeplyNestedMalformed"),
    pytest.param(f"{H}:predict", "[1, 2", 400, "JSON Parse error: Missing a comma or ']' after an array element.",
                 id="json_tensor.cc rapidjson wording: unfinished array"),
    pytest.param(f"{H}:predict", '{"instances" [1]}', 400,
                 "JSON Parse error: Missing a colon after a name of object member. at offset: 13",
                 id="json_tensor.cc rapidjson wording: missing colon"),
    pytest.param(f"{H}:predict", "[1]", 400, "JSON Value: [1] Is not object", id="json_tensor.cc Is not object"),
    pytest.param(f"{H}:predict", {"instances": [1], "inputs": [1]}, 400, "Not formatted correctly expecting only one of",
                 id="json_tensor_test.cc SingleUnnamedTensorErrors instances and inputs"),
    pytest.param(f"{H}:predict", {"instances": 5}, 400, "Expecting 'instances' to be an list/array",
                 id="json_tensor.cc instances not a list"),
    pytest.param(f"{H}:predict", {"instances": []}, 400, "No values in 'instances' array",
                 id="json_tensor.cc empty instances"),
    pytest.param(f"{H}:predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key",
                 id="json_tensor.cc neither key"),
    pytest.param(f"{H}:predict", {"signature_name": "nope", "instances": [1]}, 400,
                 'Serving signature name: "nope" not found in signature def', id="http_rest_api_handler.cc GetInfoMap"),
    pytest.param(f"{H}:predict", {"signature_name": "no_inputs", "instances": [1]}, 400,
                 "Failed to get input map for signature: no_inputs", id="json_tensor.cc empty input map"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [[1, 2], [3, 4], [5, 6, 7]]), 400,
                 "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 "
                 "but got: 3", id="json_tensor_test.cc SingleUnnamedTensorErrors size"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [[1, 2], [3, 4], [[5, 6]]]), 400,
                 "Expecting shape [2] but got: [1,2]", id="json_tensor_test.cc SingleUnnamedTensorErrors shape"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [1, [1]]), 400, "Expecting shape [] but got: [1]",
                 id="json_tensor_test.cc SingleUnnamedTensorErrors scalar then list"),
    pytest.param(f"{H}:predict", _sig("int32", "instances", [[1, 2], ["a", "b"]]), 400,
                 "not of expected type: int32", id="json_tensor_test.cc SingleUnnamedTensorErrors type"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [
        {"int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"]},
        {"int_tensor": [[[7, 8], [9, 0], [1, 2]]], "str_tensor": ["baz", "bat"]}]), 400,
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape",
        id="json_tensor_test.cc MultipleNamedTensorErrors shape"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [
        {"int_tensor": [[1, 2], [3, 4], [5, 6], [7, 8]], "str_tensor": ["foo", "bar"]},
        {"int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"]}]), 400, "Expecting tensor size",
        id="json_tensor_test.cc MultipleNamedTensorErrors size"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [
        {"int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30]]), 400,
        "Expecting object but got list at item 1 of input list", id="json_tensor_test.cc MultipleNamedTensorErrors mix 1"),
    pytest.param(f"{H}:predict", _sig("string", "instances", [["baz", "bar"], {"input": ["baz", "bat"]}]), 400,
                 "Expecting value/list but got object at item 1 of input list",
                 id="json_tensor_test.cc MultipleNamedTensorErrors mix 2"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [1]), 400,
                 "instances is a plain list, but expecting list of objects", id="json_tensor.cc plain rows, several inputs"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [{"int_tensor": [1], "str_tensor": ["a"], "extra": 1}]),
                 400, "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: JSON object: "
                      "does not have named input: extra", id="json_tensor.cc unknown named input"),
    pytest.param(f"{H}:predict", _sig("named", "instances", [{"int_tensor": [1]}]), 400,
                 "keys must be equal to: int_tensor,str_tensor", id="json_tensor.cc missing named input in a row"),
    pytest.param(f"{H}:predict", _sig("named", "inputs", [1]), 400,
                 "inputs is a plain value/list, but expecting an object", id="json_tensor.cc plain columns, several inputs"),
    pytest.param(f"{H}:predict", _sig("named", "inputs", {"int_tensor": [1]}), 400,
                 "Missing named input: str_tensor in 'inputs' object.", id="json_tensor.cc missing named column"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", [[1], 2]), 400,
                 "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
                 id="json_tensor.cc value at the wrong level"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", [1, [2]]), 400,
                 "Encountered list at unexpected level: 1 expected < 1", id="json_tensor.cc list too deep"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", [[1, 2], [3]]), 400,
                 "Encountered list at unexpected size: 1 at level: 1 expected size: 2", id="json_tensor.cc ragged list"),
    pytest.param(f"{H}:predict", _sig("string", "inputs", [{"b64": 1}]), 400,
                 "not formatted correctly for base64 data", id="json_tensor.cc b64 object without a string"),
    pytest.param(f"{H}:predict", _sig("string", "inputs", [{"b64": "a!b="}]), 400, "Unable to base64 decode",
                 id="json_tensor.cc invalid base64"),
    pytest.param(f"{H}:predict", _sig("int32", "inputs", [{"b64": "aGVsbG8="}]), 400,
                 "Type: Object is not of expected type: int32", id="json_tensor.cc object for a number"),
    pytest.param(f"{F}:predict", {"instances": [[[[True]] * 28] * 28]}, 400,
                 "JSON Value: true Type: True is not of expected type: uint8", id="json_tensor.cc true is no uint8 pixel"),
    pytest.param(f"{F}:predict", {"instances": [[[[2147483648]] * 28] * 28]}, 400,
                 "JSON Value: 2147483648 Type: Number is not of expected type: uint8",
                 id="json_tensor.cc 2147483648 is no uint8 pixel (IsInt)"),
    pytest.param(f"{H}:predict", _sig("float32", "inputs", [1.0, True]), 400,
                 "JSON Value: true Type: True is not of expected type: float", id="json_tensor.cc true is no float"),
    pytest.param(f"{H}:predict", _sig("int64", "inputs", [2**63]), 400, "is not of expected type: int64",
                 id="json_tensor.cc int64 overflow"),
    pytest.param(f"{H}:predict", _sig("uint32", "inputs", [-1]), 400, "Type: Number is not of expected type: uint32",
                 id="json_tensor.cc negative uint32"),
    pytest.param(f"{H}:predict", _sig("int8", "inputs", [1.5]), 400, "JSON Value: 1.5 Type: Number is not of expected type: int8",
                 id="json_tensor.cc a fraction for an integer"),
    pytest.param(f"{H}:predict", _sig("bool", "inputs", [1]), 400, "JSON Value: 1 Type: Number is not of expected type: bool",
                 id="json_tensor.cc 1 is no bool"),
    pytest.param(f"{H}:predict", _sig("string", "inputs", [None]), 400, "JSON Value: null Type: Null is not of expected type: string",
                 id="json_tensor.cc null is no string"),
    pytest.param(f"{H}:predict", _sig("float16", "inputs", [1]), 501, "Conversion of JSON Value: 1 to type: half",
                 id="json_tensor.cc dtypes JSON cannot carry: UNIMPLEMENTED"),
    pytest.param(f"{H}:predict", _sig("sum", "instances", [1.0]), 400, "Tensor name: total has no shape information",
                 id="json_tensor_test.cc FromJsonSingleTensorErrors no shape"),
    pytest.param(f"{H}:predict", _sig("uneven", "instances", [1.0]), 400, "has inconsistent batch size",
                 id="json_tensor_test.cc FromJsonMultipleNamedTensorsErrors"),
    pytest.param(f"{H}:classify", {"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}, 400,
                 "'signature_name' key must be a string", id="json_tensor_test.cc JsonErrors signature_name"),
    pytest.param(f"{H}:classify", {"context": [{"names": ["foo", "bar"]}]}, 400, "Example must be JSON object",
                 id="json_tensor_test.cc JsonErrors context"),
    pytest.param(f"{H}:regress", {"examples": {"names": ["foo", "bar"]}}, 400, "list/array",
                 id="json_tensor_test.cc JsonErrors examples not a list"),
    pytest.param(f"{H}:regress", {"examples": [[{"names": ["foo", "bar"]}]]}, 400, "Example must be JSON object",
                 id="json_tensor_test.cc JsonErrors example not an object"),
    pytest.param(f"{H}:regress", {"examples": [{"names": [10, None]}]}, 400,
                 "names has element with unexpected JSON type: Null", id="json_tensor_test.cc JsonErrors null"),
    pytest.param(f"{H}:regress", {"examples": [{"names": [10, 10.0]}]}, 400, "feature: names expecting type: int64",
                 id="json_tensor_test.cc JsonErrors kinds mixed"),
    pytest.param(f"{H}:regress", {"examples": [{"names": [10, {"test": 10}]}]}, 400,
                 "names has element with unexpected JSON type: Object", id="json_tensor_test.cc JsonErrors object"),
    pytest.param(f"{H}:regress", {"examples": [{"names": [[10], 20]}]}, 400,
                 "names has element with unexpected JSON type: Array", id="json_tensor_test.cc JsonErrors array"),
    pytest.param(f"{H}:regress", {"examples": [{"names": [20, 18446744073709551603]}]}, 400,
                 "Only int64_t is supported", id="json_tensor_test.cc JsonErrors uint64"),
    pytest.param(f"{H}:classify", {"signature_name": "regress_x_to_y"}, 400,
                 "When method is classify, key 'examples' is expected and was not found", id="json_tensor.cc no examples"),
    pytest.param(f"{H}:classify", {"examples": []}, 400, "'examples' value is an empty array",
                 id="json_tensor.cc empty examples"),
    pytest.param(f"{H}:classify", {"examples": [{"x": 1.0}]}, 400, "No classification inputs found in SignatureDef",
                 id="classifier.cc Classify on a Predict signature"),
    pytest.param(f"{H}:regress", {"examples": [{"x": 1.0}]}, 400, "No regression inputs found in SignatureDef",
                 id="regressor.cc Regress on a Predict signature"),
    pytest.param(f"{H}:classify", {"signature_name": "nope", "examples": [{"x": 1.0}]}, 400,
                 "No signature was found with the name: nope", id="classifier.cc unknown signature"),
    pytest.param(f"{F}:classify", {"examples": [{"x": 1.0}]}, 400, "", id="classifier.cc Classify on the image model"),
    pytest.param(f"{F}:regress", "{not json", 400, "JSON Parse error", id="http_rest_api_handler.cc body parsed first"),
    pytest.param("/v1/models/nope:classify", {"examples": [{"x": 1.0}]}, 404, "Servable not found",
                 id="classification_service.cc unknown model"),
]


@pytest.mark.parametrize("path,body,status,want", PREDICT_ERROR_CASES)
def test_rest_request_errors(servers, path, body, status, want):
    code, _, raw = _http(servers, "POST", path, body)

    _check(code, raw, status, want)


def test_cors_preflight(servers):
    """http_server.cc: OPTIONS is answered before routing: 200 for an http(s) Origin, else
    FAILED_PRECONDITION; CORS headers only with --rest_api_enable_cors_support."""
    ok, headers, _ = _http(servers, "OPTIONS", F, headers={"Origin": "https://example.org"})
    refused, _, raw = _http(servers, "OPTIONS", F)

    assert ok == 200 and "access-control-allow-origin" not in headers
    _check(refused, raw, 400, "Origin header is missing in CORS preflight")


def test_cors_headers_with_cors_support():
    """http_server.cc / http_rest_api_util.cc AddCORSHeaders with --rest_api_enable_cors_support, on every
    answer (in-process: these two requests never reach the data plane, so it is left out)."""
    from serving.configs import MonitoringSettings
    from serving.rest_api import RestApi

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        app = RestApi(None, MonitoringSettings(), timeout_ms=0, cors=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model-server") as client:
            return (await client.options(F, headers={"Origin": "http://localhost:8080"}),
                    await client.get("/v1/foo"))

    preflight, malformed = asyncio.run(ask())

    for answer in (preflight, malformed):
        assert answer.headers["access-control-allow-origin"] == "*"
        assert answer.headers["access-control-allow-methods"] == "POST, GET"
        assert answer.headers["access-control-allow-headers"] == "Content-Type"
    assert (preflight.status_code, malformed.status_code) == (200, 400)


# --- gRPC -------------------------------------------------------------------------------------------

def test_grpc_predict_over_tcp_and_the_unix_socket(servers, predict_stub):
    """tensorflow_model_server_test.py VerifyPredictRequest, testPredictUDS, testGoodGrpcChannelArgs."""
    assert servers.socket.is_socket()
    with grpc.insecure_channel(f"unix:{servers.socket}") as uds:
        over_socket = prediction_service_pb2_grpc.PredictionServiceStub(uds)
        for stub in (predict_stub, over_socket):
            for specify_output in (True, False):
                request = _predict_request()
                if specify_output:
                    request.output_filter.append("y")
                result = stub.Predict(request, timeout=30)
                assert list(result.outputs) == ["y"]
                assert result.outputs["y"].dtype == tf.float32.as_datatype_enum
                assert list(result.outputs["y"].float_val) == [3.0]
                assert (result.model_spec.name, result.model_spec.signature_name,
                        result.model_spec.version.value) == ("half_plus_two", "serving_default", 123)


@pytest.mark.parametrize("spec,served", [({}, 2), ({"version": 1}, 1), ({"version_label": "stable"}, 1),
                                         ({"version_label": "canary"}, 2)],
                         ids=["predict_util.cc latest", "version", "label stable", "label canary"])
def test_grpc_model_spec_echo(predict_stub, spec, served):
    """predict_util.cc / util.cc MakeModelSpec: name, resolved signature and the version served; no label."""
    result = predict_stub.Predict(_predict_request("fashion", "", **spec), timeout=30)

    assert (result.model_spec.name, result.model_spec.signature_name) == ("fashion", "serving_default")
    assert result.model_spec.version.value == served and result.model_spec.version_label == ""


def test_grpc_status_and_metadata(predict_stub, model_stub):
    """tensorflow_model_server_test.py testGetModelStatus, testGetModelMetadata; get_model_status_impl.cc."""
    status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "half_plus_two"}),
                                       timeout=30)
    labelled = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "fashion", "version_label": "stable"}), timeout=30)
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "half_plus_two"},
                                                              metadata_field=["signature_def"])
    metadata = predict_stub.GetModelMetadata(request, timeout=30)

    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [(123, AVAILABLE, 0)]
    assert [s.version for s in labelled.model_version_status] == [2, 1]
    assert (metadata.model_spec.name, metadata.model_spec.version.value) == ("half_plus_two", 123)
    assert list(metadata.metadata) == ["signature_def"]


def test_grpc_classify_regress_multi_inference(predict_stub):
    """tensorflow_model_server_test.py testClassify, testRegress, testMultiInference."""
    spec = {"name": "half_plus_two"}
    classified = predict_stub.Classify(classification_pb2.ClassificationRequest(
        model_spec=dict(spec, signature_name="classify_x_to_y"), input=_examples(2.0)), timeout=30)
    regressed = predict_stub.Regress(regression_pb2.RegressionRequest(
        model_spec=dict(spec, signature_name="regress_x_to_y"), input=_examples(2.0, 4.0)), timeout=30)
    multi = predict_stub.MultiInference(inference_pb2.MultiInferenceRequest(
        tasks=[{"model_spec": dict(spec, signature_name="regress_x_to_y"), "method_name": "tensorflow/serving/regress"},
               {"model_spec": dict(spec, signature_name="classify_x_to_y"), "method_name": "tensorflow/serving/classify"}],
        input=_examples(2.0)), timeout=30)

    assert [[c.score for c in item.classes] for item in classified.result.classifications] == [[3.0]]
    assert (classified.model_spec.name, classified.model_spec.signature_name,
            classified.model_spec.version.value) == ("half_plus_two", "classify_x_to_y", 123)
    assert [r.value for r in regressed.result.regressions] == [3.0, 4.0]
    assert regressed.model_spec.signature_name == "regress_x_to_y"
    assert multi.results[0].regression_result.regressions[0].value == 3.0
    assert multi.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in multi.results] == [
        ("regress_x_to_y", 123), ("classify_x_to_y", 123)]


def _metadata_request(**fields) -> get_model_metadata_pb2.GetModelMetadataRequest:
    return get_model_metadata_pb2.GetModelMetadataRequest(**fields)


def _multi(*tasks, xs=(2.0,)) -> inference_pb2.MultiInferenceRequest:
    return inference_pb2.MultiInferenceRequest(
        tasks=[{"model_spec": {"name": name, "signature_name": sig}, "method_name": f"tensorflow/serving/{method}"}
               for name, sig, method in tasks], input=_examples(*xs))


def _no_spec_predict() -> predict_pb2.PredictRequest:
    request = _predict_request()
    request.ClearField("model_spec")
    return request


def _filtered(*aliases: str) -> predict_pb2.PredictRequest:
    request = _predict_request()
    request.output_filter.extend(aliases)
    return request


def _without_inputs() -> predict_pb2.PredictRequest:
    request = _predict_request()
    request.ClearField("inputs")
    return request


HALF = {"name": "half_plus_two"}
GRPC_ERROR_CASES = [
    # (service, method, request, code, text in the details)
    pytest.param("predict", "Predict", lambda: _predict_request(""), INVALID, "ModelSpec has no name specified.",
                 id="server_core.cc empty model name"),
    pytest.param("predict", "Predict", _no_spec_predict, INVALID, "Missing ModelSpec", id="predict_impl.cc no model_spec"),
    pytest.param("predict", "Predict", lambda: _predict_request("intentionally_missing_model"), NOT_FOUND,
                 "Servable not found for request: Latest(intentionally_missing_model)",
                 id="tensorflow_model_server_test_base.py WaitForServerReady"),
    pytest.param("predict", "Predict", lambda: _predict_request(version=7), NOT_FOUND,
                 "Servable not found for request: Specific(half_plus_two, 7)", id="server_core.cc unknown version"),
    pytest.param("predict", "Predict", lambda: _predict_request(version_label="nope"), INVALID,
                 "Unrecognized servable version label: nope", id="server_core.cc unknown label"),
    pytest.param("predict", "Predict", lambda: _predict_request(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                 'Serving signature key "nope" not found.', id="predict_util.cc unknown signature"),
    pytest.param("predict", "Predict", lambda: _filtered("nope"), INVALID,
                 "output tensor alias not found in signature: nope Outputs expected to be in the set {y}.",
                 id="predict_util.cc unknown output_filter alias"),
    pytest.param("predict", "Predict", lambda: _filtered("y", "y"), INVALID, "duplicate output tensor alias: y",
                 id="predict_util.cc duplicate output_filter alias"),
    pytest.param("predict", "Predict", _without_inputs, INVALID,
                 "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}.",
                 id="predict_util.cc VerifyRequestInputsSize"),
    pytest.param("model", "GetModelStatus", lambda: get_model_status_pb2.GetModelStatusRequest(), INVALID,
                 "Missing ModelSpec", id="get_model_status_impl.cc no model_spec"),
    pytest.param("model", "GetModelStatus", lambda: get_model_status_pb2.GetModelStatusRequest(model_spec={"name": ""}),
                 NOT_FOUND, "Could not find any versions of model ", id="get_model_status_impl.cc empty name"),
    pytest.param("model", "GetModelStatus",
                 lambda: get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion", "version": {"value": 7}}),
                 NOT_FOUND, "Could not find version 7 of model fashion", id="get_model_status_impl.cc unknown version"),
    pytest.param("predict", "GetModelMetadata", lambda: _metadata_request(model_spec=HALF), INVALID,
                 "GetModelMetadataRequest must specify at least one metadata_field",
                 id="get_model_metadata_impl.cc no metadata_field"),
    pytest.param("predict", "GetModelMetadata", lambda: _metadata_request(model_spec=HALF, metadata_field=["foo"]),
                 INVALID, "Metadata field foo is not supported", id="get_model_metadata_impl.cc unknown field"),
    pytest.param("predict", "GetModelMetadata", lambda: _metadata_request(model_spec={"name": ""},
                                                                          metadata_field=["signature_def"]),
                 INVALID, "ModelSpec has no name specified.", id="server_core.cc metadata, empty model name"),
    pytest.param("predict", "Classify", lambda: classification_pb2.ClassificationRequest(
        model_spec={"name": "fashion"}, input=_examples(1.0)), INVALID, "", id="classifier.cc Classify on the image model"),
    pytest.param("predict", "Classify", lambda: classification_pb2.ClassificationRequest(model_spec=HALF,
                                                                                          input=_examples(1.0)),
                 INVALID, "No classification inputs found in SignatureDef", id="classifier.cc Predict signature"),
    pytest.param("predict", "Classify", lambda: classification_pb2.ClassificationRequest(
        model_spec=dict(HALF, signature_name="nope")), INVALID, "No signature was found with the name: nope",
        id="classifier.cc unknown signature"),
    pytest.param("predict", "Classify", lambda: classification_pb2.ClassificationRequest(
        model_spec=dict(HALF, signature_name="classify_x_to_y")), INVALID, "Input is empty.", id="util.cc no examples"),
    pytest.param("predict", "Classify", lambda: classification_pb2.ClassificationRequest(), INVALID, "Missing ModelSpec",
                 id="classification_service.cc no model_spec"),
    pytest.param("predict", "Regress", lambda: regression_pb2.RegressionRequest(model_spec=HALF, input=_examples(1.0)),
                 INVALID, "No regression inputs found in SignatureDef", id="regressor.cc Predict signature"),
    pytest.param("predict", "Regress", lambda: regression_pb2.RegressionRequest(
        model_spec=dict(HALF, signature_name="classify_x_to_y"), input=_examples(1.0)), INVALID,
        "No regression outputs found in SignatureDef", id="regressor.cc classify signature"),
    pytest.param("predict", "MultiInference", lambda: inference_pb2.MultiInferenceRequest(), INVALID,
                 "ModelSpec has no name specified.", id="multi_inference_helper.cc no tasks"),
    pytest.param("predict", "MultiInference",
                 lambda: _multi(("half_plus_two", "regress_x_to_y", "regress"), ("fashion", "", "classify")), INVALID,
                 "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
                 id="multi_inference.cc two models"),
    pytest.param("predict", "MultiInference",
                 lambda: _multi(("half_plus_two", "regress_x_to_y", "regress"), ("half_plus_two", "regress_x_to_y", "regress")),
                 INVALID, "Duplicate evaluation of signature: regress_x_to_y", id="multi_inference.cc duplicate"),
    pytest.param("predict", "MultiInference", lambda: _multi(("half_plus_two", "nope", "regress")), INVALID,
                 "Requested signature not found in model graph: nope", id="multi_inference.cc unknown signature"),
    pytest.param("predict", "MultiInference", lambda: _multi(("half_plus_two", "regress_x_to_y", "predict")),
                 grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict",
                 id="multi_inference.cc method_name"),
]


@pytest.mark.parametrize("service,method,make_request,code,text", GRPC_ERROR_CASES)
def test_grpc_error_codes(predict_stub, model_stub, service, method, make_request, code, text):
    stub = predict_stub if service == "predict" else model_stub

    got_code, details = _grpc_error(getattr(stub, method), make_request())

    assert got_code == code
    assert text in details


def _reload(model_stub, config: model_server_config_pb2.ModelServerConfig):
    return _grpc_error(model_stub.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=config))


def test_grpc_reload_config_refusals_change_nothing(servers, model_stub, predict_stub):
    """server_core.cc: a model listed twice, and a label on a version that is not available, are refused."""
    config = text_format.Parse(servers.config.read_text(), model_server_config_pb2.ModelServerConfig())
    twice = model_server_config_pb2.ModelServerConfig()
    twice.CopyFrom(config)
    twice.model_config_list.config.append(config.model_config_list.config[1])
    unavailable = model_server_config_pb2.ModelServerConfig()
    unavailable.CopyFrom(config)
    unavailable.model_config_list.config[0].version_labels["stable"] = 9

    assert _reload(model_stub, twice) == (INVALID, "Illegal to list model half_plus_two multiple times in config list")
    assert _reload(model_stub, unavailable) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "Request to assign label to version 9 of model fashion, which is not currently available for inference")
    assert predict_stub.Predict(_predict_request("fashion", "", version_label="stable"), timeout=30).model_spec.version.value == 1


# --- flags and start-up ----------------------------------------------------------------------------

def test_prometheus_endpoint(servers):
    """tensorflow_model_server_test.py testPrometheusEndpoint (--monitoring_config_file)."""
    with urllib.request.urlopen(servers.main.rest_url + "/monitoring/prometheus/metrics", timeout=10) as resp:
        assert "# TYPE" in resp.read().decode()


def _listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on, read from /proc (sockets it holds, in state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_without_rest_api_port_there_is_no_rest_listener(servers):
    """main.cc / server.cc: --rest_api_port unset (0) exports no HTTP/REST API; gRPC alone listens."""
    grpc_port = int(servers.no_rest_target.rsplit(":", 1)[1])

    assert _listening_tcp_ports(servers.no_rest.proc.pid) == {grpc_port}
    assert "Exporting HTTP/REST API" not in servers.no_rest.output(400)


def test_signature_method_name_check_flag(servers):
    """classifier.cc / predict_util.cc with --enable_signature_method_name_check: a SignatureDef saved by
    tf.saved_model.save says tensorflow/serving/predict, so Classify refuses it and Predict takes it."""
    with grpc.insecure_channel(servers.no_rest_target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        request = classification_pb2.ClassificationRequest(model_spec=dict(HALF, signature_name="classify_x_to_y"),
                                                           input=_examples(2.0))
        code, details = _grpc_error(stub.Classify, request)
        predicted = stub.Predict(_predict_request(), timeout=30)
        health = health_pb2_grpc.HealthStub(ch)
        statuses = {name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
                    for name in ("", "PredictionService", "ModelService", "tensorflow.serving.PredictionService")}

    assert (code, details) == (INVALID, "Expected classification signature method_name to be "
                                        "tensorflow/serving/classify. Was: tensorflow/serving/predict")
    assert list(predicted.outputs["y"].float_val) == [3.0]
    assert set(statuses.values()) == {health_pb2.HealthCheckResponse.SERVING}  # server.cc registers the short names


def test_bad_model_config_fails_start_up(servers):
    """tensorflow_model_server_test.py testBadModelConfig: the parse error names the message type."""
    wait_until(lambda: servers.bad.returncode is not None, timeout=120, what="the bad-config server to exit")

    assert servers.bad.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in servers.bad.output(50)
    assert "Failed to start server. Error:" in servers.bad.output(50)


def test_help_names_the_deviations_from_tf_serving():
    text = flags.usage()

    assert "--grpc_socket_path=''" in text and "--rest_api_port=-1" in text
    assert all(deviation in text for deviation in flags.DEVIATIONS)


def test_model_config_file_is_polled(servers, predict_stub):
    """tensorflow_model_server_test.py testModelConfigReload: a rewritten config file is served within the poll
    period; here half_plus_two is replaced by half_plus_three (the same model under a new name) and back."""
    def serves(name: str) -> bool:
        try:
            return predict_stub.Predict(_predict_request(name), timeout=30).model_spec.name == name
        except grpc.RpcError:
            return False

    shutil.copytree(servers.base / "half_plus_two", servers.base / "half_plus_three")
    swapped = _model_config(servers.base, half="half_plus_three")
    original = servers.config.read_text()
    try:
        servers.config.write_text(swapped)
        wait_until(lambda: serves("half_plus_three") and not serves("half_plus_two"), timeout=60,
                   what="the polled config to swap the models")
    finally:
        servers.config.write_text(original)
        wait_until(lambda: serves("half_plus_two"), timeout=60, what="the original config to be served again")
