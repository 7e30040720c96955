"""The gateway's TF Serving wire subset is byte-compatible with the official messages, both ways.

The official side (tensorflow_serving.apis, TensorFlow's protos) lives in this process. The gateway
side runs in a child process, `python -c GATEWAY_SIDE`, with the gateway's own builders and
readers (gateway/backend.py, gateway/tensors.py) and nothing of TensorFlow's, so each side's bytes
come from a runtime that never saw the other's message classes; bytes cross as base64 JSON. (The
two can share a process too - the subset lives in a private descriptor pool - as the first test
shows.)

* gateway -> official: what the gateway sends (Predict, GetModelMetadata, GetModelStatus requests)
  parses with the official classes into the intended values, and equals, byte for byte, the same
  message built with the official API.
* official -> gateway: what TF Serving sends (Predict responses with tensor_content, float_val and
  string_val tensors, metadata with a real SignatureDef in an Any, model status) reads in the
  gateway into the right values, and re-serializes to the very same bytes (fields the subset does
  not declare survive as unknown fields).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GATEWAY_SIDE = r'''
import base64, json, sys
from gateway import backend, tensors
from gateway.decode import InputSpec
from gateway.wire import apis, tensor

def b64(message):
    return base64.b64encode(message.SerializeToString(deterministic=True)).decode()

incoming = {k: base64.b64decode(v) for k, v in json.load(sys.stdin).items()}
out = {"sent": {
    "predict": b64(backend.predict_request("fashion", 3, "images", bytes(range(12)), 2, InputSpec(2, 3, 1), "scores")),
    "labels": b64(backend.predict_request("fashion", 3, "images", bytes(28 * 28), 1, InputSpec(28, 28, 1), "classes")),
    "status": b64(backend.status_request("fashion")),
    "metadata": b64(backend.metadata_request("fashion", 3)),
    "strings": b64(tensors.string_tensor([b"a.png", b"\x00\xff"])),
}, "read": {}, "echo": {}}

response = apis.PredictResponse.FromString(incoming["predict"])
out["read"]["scores"] = backend.parse_scores(response, 2, 3)
out["read"]["labels"] = list(backend.parse_labels(response))
out["read"]["version"] = response.model_spec.version.value
out["read"]["float_val"] = tensors.float_values(tensor.TensorProto.FromString(incoming["float_val"]))
out["read"]["filled"] = tensors.float_values(tensor.TensorProto.FromString(incoming["filled"]))
sig = backend.parse_signature("fashion", apis.GetModelMetadataResponse.FromString(incoming["metadata"]))
out["read"]["signature"] = [sig.version, sig.input_name, sig.input.height, sig.input.width, sig.input.channels]
out["read"]["status"] = [[v.version, v.state] for v in backend.parse_status(apis.GetModelStatusResponse.FromString(incoming["status"]))]
kinds = {"predict": apis.PredictResponse, "metadata": apis.GetModelMetadataResponse,
         "status": apis.GetModelStatusResponse, "float_val": tensor.TensorProto, "filled": tensor.TensorProto,
         "extra_fields": tensor.TensorProto, "predict_request": apis.PredictRequest}
for key, kind in kinds.items():
    out["echo"][key] = b64(kind.FromString(incoming[key]))
json.dump(out, sys.stdout)
'''


def b64(message) -> str:
    return base64.b64encode(message.SerializeToString(deterministic=True)).decode()


def test_one_process_holds_tensorflows_stubs_and_every_gateway_module():
    import importlib

    from tensorflow_serving.apis import predict_pb2

    modules = sorted(p.stem for p in (ROOT / "gateway").glob("*.py") if p.stem != "__main__")
    for name in modules:
        importlib.import_module(f"gateway.{name}")
    from gateway import backend
    from gateway.types import InputSpec

    sent = backend.predict_request("fashion", 3, "images", bytes(6), 1, InputSpec(2, 3, 1), ("scores", "ood_score"))
    official = predict_pb2.PredictRequest.FromString(sent.SerializeToString())
    assert (official.model_spec.version.value, list(official.output_filter)) == (3, ["scores", "ood_score"])
    assert official.SerializeToString(deterministic=True) == sent.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def official():
    """The official message modules (imports TensorFlow: allowed in this process)."""
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                         predict_pb2)

    return dict(tensor=tensor_pb2, types=types_pb2, meta_graph=meta_graph_pb2, metadata=get_model_metadata_pb2,
                status=get_model_status_pb2, model=model_pb2, predict=predict_pb2)


@pytest.fixture(scope="module")
def messages(official):
    """What a TF Serving model server sends, built with the official API and TensorFlow's helpers."""
    import numpy as np
    import tensorflow as tf

    predict = official["predict"].PredictResponse()
    predict.model_spec.name = "fashion"
    predict.model_spec.version.value = 3
    predict.model_spec.signature_name = "serving_default"
    predict.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32)))
    predict.outputs["classes"].CopyFrom(tf.make_tensor_proto(np.array([[b"cat", b"dog", "café".encode()]] * 2)))

    types = official["types"]
    float_val = official["tensor"].TensorProto(dtype=types.DT_FLOAT, float_val=[0.25, 0.75])
    float_val.tensor_shape.dim.add(size=1)
    float_val.tensor_shape.dim.add(size=2)
    filled = official["tensor"].TensorProto(dtype=types.DT_FLOAT, float_val=[0.5])
    filled.tensor_shape.dim.add(size=3)
    # Fields the subset does not declare (uint32_val = 16, uint64_val = 17) must survive a round trip.
    extra_fields = official["tensor"].TensorProto(dtype=types.DT_UINT32, uint32_val=[1, 2], uint64_val=[3])

    signature = official["meta_graph"].SignatureDef(method_name="tensorflow/serving/predict")
    images = signature.inputs["images"]
    images.name, images.dtype = "serving_default_images:0", types.DT_UINT8
    for size in (-1, 28, 28, 1):
        images.tensor_shape.dim.add(size=size)
    for key, dtype in (("scores", types.DT_FLOAT), ("classes", types.DT_STRING)):
        out = signature.outputs[key]
        out.name, out.dtype = f"StatefulPartitionedCall:{key}", dtype
        out.tensor_shape.dim.add(size=-1)
        out.tensor_shape.dim.add(size=10)
    signature_map = official["metadata"].SignatureDefMap()
    signature_map.signature_def["serving_default"].CopyFrom(signature)
    signature_map.signature_def["image_bytes"].CopyFrom(official["meta_graph"].SignatureDef(method_name="x"))
    metadata = official["metadata"].GetModelMetadataResponse()
    metadata.model_spec.name = "fashion"
    metadata.model_spec.version.value = 3
    metadata.metadata["signature_def"].Pack(signature_map)

    status = official["status"].GetModelStatusResponse()
    for version, state in ((2, official["status"].ModelVersionStatus.END),
                           (3, official["status"].ModelVersionStatus.AVAILABLE)):
        entry = status.model_version_status.add(version=version, state=state)
        entry.status.error_message = "" if version == 3 else "unloaded"

    predict_request = official["predict"].PredictRequest()
    predict_request.model_spec.name = "fashion"
    predict_request.model_spec.version_label = "stable"
    predict_request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 2, 2, 1), np.uint8)))
    predict_request.output_filter.append("scores")

    return dict(predict=predict, float_val=float_val, filled=filled, extra_fields=extra_fields,
                metadata=metadata, status=status, predict_request=predict_request)


@pytest.fixture(scope="module")
def gateway_side(messages):
    proc = subprocess.run([sys.executable, "-c", GATEWAY_SIDE], cwd=ROOT, timeout=60, capture_output=True,
                          text=True, input=json.dumps({k: b64(m) for k, m in messages.items()}),
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def official_bytes(text: str) -> bytes:
    return base64.b64decode(text)


def test_the_gateways_predict_request_is_the_official_one(official, gateway_side):
    import numpy as np
    import tensorflow as tf

    sent = official_bytes(gateway_side["sent"]["predict"])
    request = official["predict"].PredictRequest.FromString(sent)
    assert (request.model_spec.name, request.model_spec.version.value, request.model_spec.signature_name) == \
        ("fashion", 3, "serving_default")
    assert list(request.output_filter) == ["scores"]
    images = request.inputs["images"]
    assert images.dtype == official["types"].DT_UINT8 and images.tensor_content == bytes(range(12))
    np.testing.assert_array_equal(tf.make_ndarray(images), np.arange(12, dtype=np.uint8).reshape(2, 2, 3, 1))

    expected = official["predict"].PredictRequest(output_filter=["scores"])
    expected.model_spec.name, expected.model_spec.signature_name = "fashion", "serving_default"
    expected.model_spec.version.value = 3
    expected.inputs["images"].CopyFrom(official["tensor"].TensorProto(
        dtype=official["types"].DT_UINT8, tensor_content=bytes(range(12))))
    for size in (2, 2, 3, 1):
        expected.inputs["images"].tensor_shape.dim.add(size=size)
    assert expected.SerializeToString(deterministic=True) == sent


def test_the_gateways_other_requests_are_the_official_ones(official, gateway_side):
    sent = gateway_side["sent"]
    status = official["status"].GetModelStatusRequest()
    status.model_spec.name = "fashion"
    assert official_bytes(sent["status"]) == status.SerializeToString(deterministic=True)

    metadata = official["metadata"].GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "fashion"
    metadata.model_spec.version.value = 3
    assert official_bytes(sent["metadata"]) == metadata.SerializeToString(deterministic=True)

    labels = official["predict"].PredictRequest.FromString(official_bytes(sent["labels"]))
    assert list(labels.output_filter) == ["classes"]
    assert [d.size for d in labels.inputs["images"].tensor_shape.dim] == [1, 28, 28, 1]

    strings = official["tensor"].TensorProto.FromString(official_bytes(sent["strings"]))
    assert strings.dtype == official["types"].DT_STRING and list(strings.string_val) == [b"a.png", b"\x00\xff"]


def test_the_gateway_reads_what_tf_serving_sends(gateway_side):
    import numpy as np

    read = gateway_side["read"]
    assert read["version"] == 3
    assert read["scores"] == np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32).tolist()  # exact
    assert read["labels"] == ["cat", "dog", "café"]
    assert read["float_val"] == [0.25, 0.75]
    assert read["filled"] == [0.5, 0.5, 0.5]
    assert read["signature"] == [3, "images", 28, 28, 1]
    assert read["status"] == [[2, "END"], [3, "AVAILABLE"]]


def test_official_messages_survive_a_round_trip_through_the_subset_byte_for_byte(messages, gateway_side):
    for key, message in messages.items():
        assert official_bytes(gateway_side["echo"][key]) == message.SerializeToString(deterministic=True), key
