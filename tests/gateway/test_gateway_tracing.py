"""Optional OpenTelemetry tracing (off by default; see gateway/tracing.py): on, every request
gets a span and the trace context travels on to the model server's Predict call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import httpx

from imgclass_client.proto.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
IMAGE = (ROOT / "examples" / "fashion" / "bag.png").read_bytes()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _spans(log: Path) -> list[dict]:
    spans = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith("{") and '"context"' in line:
            record = json.loads(line)
            if "trace_id" in record.get("context", {}):
                spans.append(record)
    return spans


def test_spans_cover_rest_and_grpc_and_the_context_reaches_the_model_server(model_server, tmp_path):
    log = tmp_path / "gateway.log"
    env = dict(os.environ, GATEWAY_TRACING="console")
    gw = stack.start_gateway(backend=model_server.grpc_target, env=env, log_path=log)
    try:
        answer = httpx.post(f"{gw.http_url}/v1/classify", files={"image": ("bag.png", IMAGE, "image/png")},
                            headers={"traceparent": PARENT}, timeout=30)
        assert answer.status_code == 200, answer.text
        with grpc.insecure_channel(gw.grpc_target) as channel:
            reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=IMAGE), timeout=30)
        assert reply.label
    finally:
        assert gw.process.stop() == 0
    spans = _spans(log)
    predicts = [s for s in spans if s["name"] == "/tensorflow.serving.PredictionService/Predict"]
    assert len(predicts) >= 2, [s["name"] for s in spans]
    assert all(s["kind"] == "SpanKind.CLIENT" for s in predicts)
    # The REST request carried a traceparent: its Predict call continues that trace.
    assert any(s["context"]["trace_id"] == "0x" + TRACE_ID for s in predicts)
    # The gRPC request is traced on the server side, and its Predict is a child in the same trace.
    grpc_server = [s for s in spans if s["name"] == "/classifier.v1.Classifier/Classify"
                   and s["kind"] == "SpanKind.SERVER"]
    assert grpc_server
    trace_ids = {s["context"]["trace_id"] for s in grpc_server}
    assert any(s["context"]["trace_id"] in trace_ids for s in predicts)
