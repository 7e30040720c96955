"""`workers: 2`: two gateway processes share both ports, both answer, and SIGTERM stops them all."""

from __future__ import annotations

import grpc
import httpx
import pytest

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from helpers import samples
from tools import stack
from helpers import wait_until


@pytest.mark.slow
def test_two_workers_share_the_ports_and_stop_together(model_server, images):
    gw = stack.start_gateway(backend=model_server.grpc_target, extra_args=["--workers=2"])
    try:
        seen: set[str] = set()

        def both_answered() -> bool:  # every HTTP request on a new connection: the kernel picks a worker
            seen.update(labels["worker"] for labels, _ in samples(gw.http_url, "gateway_worker"))
            return seen == {"0", "1"}

        wait_until(both_answered, 30, "both workers to answer /metrics")
        for _ in range(4):
            with grpc.insecure_channel(gw.grpc_target) as channel:
                answer = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(image=images[0]), timeout=30)
            assert answer.label
        assert httpx.get(f"{gw.http_url}/readyz", timeout=10).status_code == 200
    finally:
        code = gw.process.stop(grace=30)
    assert code == 0
