"""Fair share under overload, over the wire: one caller floods the gateway (256 calls in flight,
from a process of its own: loadtest/flood.py), another asks for one image at a time. The quiet
caller's latency must stay close to what it is alone, and only the flood may be refused.
(The batcher's rules in-process: tests/gateway/test_gateway_batcher.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import samples, wait_until
from loadtest.bench_fairness import quiet
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "fashion" / "bag.png"


@pytest.mark.slow
def test_a_quiet_caller_keeps_its_latency_while_another_floods(model_server):
    # One Predict in flight per model server: what `python -m serving` runs at once (a batch uses
    # all its cores). More would only queue inside the model server, where no fairness applies; the
    # quiet caller's items take the express lane beside it (gateway/batcher.py).
    gw = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--max-concurrent-batches=1"])
    flood = None
    try:
        image = IMAGE.read_bytes()
        quiet(gw.grpc_target, image, 0.5)  # warm up both processes
        alone = quiet(gw.grpc_target, image, 3)
        flood = subprocess.Popen([sys.executable, "-m", "loadtest.flood", gw.grpc_target, str(IMAGE),
                                  "10", "256", "flood"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wait_until(lambda: any(labels.get("caller") == "flood" and value > 0
                               for labels, value in samples(gw.http_url, "gateway_caller_queue_depth")),
                   30, "the flood to fill the queue")
        crowded = quiet(gw.grpc_target, image, 4)
        out, _ = flood.communicate(timeout=60)
        flood_result = json.loads(out.strip().splitlines()[-1])
        rejected = {labels["caller"]: value for labels, value in samples(gw.http_url, "gateway_caller_rejections_total")}
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait(10)
        gw.process.stop()

    print(f"\nquiet caller alone: {alone.answers} answers, p50 {alone.p50_ms:.1f} ms; next to 256 in flight: "
          f"{crowded.answers} answers, p50 {crowded.p50_ms:.1f} ms, p99 {crowded.p99_ms:.1f} ms; "
          f"flood: {flood_result}; refusals by caller {rejected}")
    assert not alone.refused and not crowded.refused, (alone.refused, crowded.refused)
    assert alone.answers and crowded.answers, "the quiet caller got no answer"
    assert crowded.p50_ms <= 10 * alone.p50_ms, "the quiet caller waited behind the flood"
    assert flood_result["answers"] > 0, "fair queueing must not starve the flood either"
    assert set(rejected) <= {"flood"}, rejected
