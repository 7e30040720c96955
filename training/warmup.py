"""Warm-up requests in `assets.extra/tf_serving_warmup_requests`, the file TF Serving replays.

TF Serving runs every record through the model before it reports the version AVAILABLE, so the
first real request does not pay for graph initialisation. The file is a TFRecord of
`PredictionLog` messages; ours hold Predict requests for both signatures, built with the official
`tensorflow_serving.apis` protos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
PIXEL_BATCHES = (1, 8)  # warm the batch-1 path and a small batch


def _request(model_name: str, signature: str, key: str, value: np.ndarray) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name: str, samples: np.ndarray) -> list[prediction_log_pb2.PredictionLog]:
    """Predict requests built from real `samples` (uint8 `[n, H, W, C]`) for both signatures."""
    logs = [_request(model_name, "serving_default", "images", samples[:n])
            for n in PIXEL_BATCHES if n <= len(samples)]
    png = tf.io.encode_png(samples[0]).numpy()
    logs.append(_request(model_name, "image_bytes", "image_bytes", np.array([png], dtype=object)))
    return logs


def write_warmup(export_dir: Path, model_name: str, samples: np.ndarray) -> Path:
    path = export_dir / ASSETS_EXTRA / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_requests(model_name, samples):
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: Path) -> list[prediction_log_pb2.PredictionLog]:
    path = export_dir / ASSETS_EXTRA / WARMUP_FILE
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(path))]
