"""Fair share under overload, over the wire: one caller floods the gateway (256 calls in flight,
from a process of its own: loadtest/flood.py), another asks for one image at a time. The quiet
caller's latency must stay close to what it is alone, and only the flood may be refused.
(The batcher's rules in-process: tests/gateway/test_gateway_batcher.py.)"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import samples
from tools import stack
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "fashion" / "bag.png"


def quiet_calls(target: str, seconds: float) -> tuple[list[float], list[str]]:
    """One call at a time as caller `quiet` for `seconds`: latencies and error codes."""
    latencies, errors = [], []
    image = IMAGE.read_bytes()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                stub.Classify(pb.ClassifyRequest(image=image), timeout=30, metadata=(("x-client-id", "quiet"),))
            except grpc.RpcError as err:
                errors.append(err.code().name)
                continue
            latencies.append(time.monotonic() - started)
    return latencies, errors


@pytest.mark.slow
def test_a_quiet_caller_keeps_its_latency_while_another_floods(model_server):
    # One Predict in flight per model server: what `python -m serving` runs at once (a batch uses
    # all its cores). More would only queue inside the model server, where no fairness applies; the
    # quiet caller's items take the express lane beside it (gateway/batcher.py).
    gw = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--max-concurrent-batches=1"])
    flood = None
    try:
        quiet_calls(gw.grpc_target, 0.5)  # warm up both processes
        alone, alone_errors = quiet_calls(gw.grpc_target, 3)
        flood = subprocess.Popen([sys.executable, "-m", "loadtest.flood", gw.grpc_target, str(IMAGE),
                                  "10", "256", "flood"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wait_until(lambda: any(labels.get("caller") == "flood" and value > 0
                               for labels, value in samples(gw.http_url, "gateway_caller_queue_depth")),
                   30, "the flood to fill the queue")
        crowded, crowded_errors = quiet_calls(gw.grpc_target, 4)
        out, _ = flood.communicate(timeout=60)
        flood_result = json.loads(out.strip().splitlines()[-1])
        rejected = {labels["caller"]: value for labels, value in samples(gw.http_url, "gateway_caller_rejections_total")}
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait(10)
        gw.process.stop()

    p50_alone, p50_crowded = statistics.median(alone), statistics.median(crowded)
    p99_crowded = sorted(crowded)[int(len(crowded) * 0.99) - 1]
    print(f"\nquiet caller alone: {len(alone)} answers, p50 {p50_alone * 1000:.1f} ms; next to 256 in flight: "
          f"{len(crowded)} answers, p50 {p50_crowded * 1000:.1f} ms, p99 {p99_crowded * 1000:.1f} ms; "
          f"flood: {flood_result}; refusals by caller {rejected}")
    assert not alone_errors and not crowded_errors, (alone_errors, crowded_errors)
    assert p50_crowded <= 10 * p50_alone, "the quiet caller waited behind the flood"
    assert flood_result["answers"] > 0, "fair queueing must not starve the flood either"
    assert set(rejected) <= {"flood"}, rejected
