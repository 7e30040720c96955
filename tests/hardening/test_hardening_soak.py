"""A short soak: thousands of mixed good and hostile requests over both transports against one
gateway. No good request is lost (every one answered OK with a real decision), every bad one gets
its status from the table, and the gateway's resident memory is printed before and after.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import httpx
import pytest

from helpers import fashion_test_images, metric
from hardening_support import Request, hostile_requests, rss_mib, send_all
from hostile_images import png

pytestmark = pytest.mark.slow

GOOD_SHARE = 0.5
TOTAL = 3000


def mixed_load(good_images: list[bytes], count: int, seed: int = 6) -> list[Request]:
    rng = random.Random(seed)
    hostile = hostile_requests(good_images[0])
    load = []
    for i in range(count):
        if rng.random() < GOOD_SHARE:
            load.append(Request(rng.choice(["grpc", "rest"]), rng.choice(good_images)))
        else:
            load.append(next(hostile))
    return load


def test_soak_mixed_good_and_hostile_requests(gateway, fashion_data):
    good = [png(p) for p in fashion_test_images(fashion_data, 200)]
    pid = gateway.process.proc.pid
    asyncio.run(send_all(gateway, mixed_load(good, 300, seed=1)))  # warm-up
    before = rss_mib(pid)
    errors_before = metric(gateway.http_url, "gateway_requests_total", status="INTERNAL")
    started = time.perf_counter()
    answers = asyncio.run(send_all(gateway, mixed_load(good, TOTAL), concurrency=16))
    seconds = time.perf_counter() - started
    after = rss_mib(pid)

    good_answers = [a for r, a in answers if r.expect == "OK" and r.image in good]
    lost = [(r.transport, a.code, a.message) for r, a in answers if a.code != r.expect]
    latencies = sorted(a.seconds for a in good_answers)
    codes = collections.Counter(a.code for _, a in answers)
    print(f"\nsoak: {len(answers)} requests in {seconds:.1f} s ({len(answers) / seconds:.0f}/s), {dict(codes)}; "
          f"{len(good_answers)} good ones, p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms; gateway RSS {before:.1f} -> {after:.1f} MiB")
    assert len(answers) == TOTAL
    assert not lost, lost[:10]
    assert all(a.body["predictions"] and a.body["model_version"] >= 1 for a in good_answers)
    assert metric(gateway.http_url, "gateway_requests_total", status="INTERNAL") == errors_before
    assert after - before < 30, f"RSS grew {after - before:.1f} MiB"
    assert httpx.get(f"{gateway.http_url}/healthz", timeout=10).status_code == 200
