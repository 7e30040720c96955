"""Replaying `assets.extra/tf_serving_warmup_requests` before a version is marked AVAILABLE.

As TF Serving: a TFRecord file of PredictionLog records, each request replayed
`num_request_iterations` times, at most 1000 records, and any failure fails the load (a warm-up
request that does not run would not run for a client either).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import prediction_log_pb2

from serving.savedmodel import LoadError, LoadedModel
from serving.signatures import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000


def run_warmup(model: LoadedModel, iterations: int) -> int:
    """Replay the version's warm-up records; returns how many were read (0 without a file)."""
    path = model.path / WARMUP_FILE
    if not path.exists():
        log.info("No warmup data file found at %s", path)
        return 0
    start = time.perf_counter()
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            count += 1
            if count > MAX_RECORDS:
                raise LoadError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
            _replay(model, record.numpy(), path, iterations)
    except tf.errors.DataLossError as exc:
        raise LoadError(grpc.StatusCode.DATA_LOSS,
                        f"{exc.message}. Please verify your warmup data is in TFRecord format.") from exc
    elapsed_us = int((time.perf_counter() - start) * 1e6)
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
             "Elapsed time (microseconds): %d.", path, count, elapsed_us)
    return count


def _replay(model: LoadedModel, record: bytes, path: Path, iterations: int) -> None:
    try:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
    except protobuf_message.DecodeError as exc:
        raise LoadError(grpc.StatusCode.INVALID_ARGUMENT, f"Failed to parse warmup record from {path}") from exc
    kind = entry.WhichOneof("log_type")
    if kind != "predict_log":
        raise LoadError(grpc.StatusCode.UNIMPLEMENTED,
                        f"Unsupported log_type for warmup: {kind} (python -m serving replays predict_log only)")
    request = entry.predict_log.request
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = model.signature(name)
    if signature is None:
        raise LoadError(grpc.StatusCode.FAILED_PRECONDITION,
                        f"warm-up request for signature \"{name}\", which {model.path} does not have")
    inputs = signature.decode_inputs(request.inputs)
    signature.validate_inputs(inputs)
    signature.select_outputs(list(request.output_filter))
    for _ in range(iterations):
        signature(inputs)
