"""A flood of Classify calls from a process of its own, for the fairness test and the benchmark:

    python -m loadtest.flood TARGET IMAGE_FILE SECONDS IN_FLIGHT CLIENT_ID

keeps IN_FLIGHT calls open against the gateway at TARGET for SECONDS, as caller CLIENT_ID, and
prints one JSON line: answers, refusals by gRPC code, p50/p99 latency in ms (null when
nothing was answered).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from loadtest.loadgen import percentile


async def flood(target: str, image: bytes, seconds: float, in_flight: int, client_id: str) -> dict:
    latencies: list[float] = []
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    await stub.Classify(pb.ClassifyRequest(image=image), timeout=30,
                                        metadata=(("x-client-id", client_id),))
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] = codes.get(err.code().name, 0) + 1
                    await asyncio.sleep(0.01)  # a refused caller backs off a little, as clients do
                    continue
                latencies.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    ms = [s * 1000 for s in latencies]
    return {"answers": len(latencies), "refused": codes,
            "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99)}


if __name__ == "__main__":
    target, image_file, seconds, in_flight, client_id = sys.argv[1:6]
    result = asyncio.run(flood(target, Path(image_file).read_bytes(), float(seconds), int(in_flight), client_id))
    print(json.dumps(result), flush=True)
