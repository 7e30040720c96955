"""The gateway in front of a fleet: several real `python -m serving` replicas on free ports, one real
gateway, real gRPC and HTTP clients - rolling updates, a pod canary, a replica killed and one
added, version and label selection, a canary's share and a shadow's verdict.

Version 2 of the model is version 1 with its labels rotated by one place (tests/gateway/fleet_support.py):
the scores are the same, so every answer's top label says which version produced it, and a
request answered by one version but labelled by another cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest

from gateway.settings import Settings
from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from fleet_support import Load, Replica, endpoint_images, fleet_target, publish, rotated_copy, served, wait_for
from tools import stack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def versions(tiny_models_dir, tmp_path_factory) -> SimpleNamespace:
    """v1: the session's tiny model; rotated: the same model with every label moved one place."""
    rotated = tmp_path_factory.mktemp("versions") / "rotated"
    v1 = tiny_models_dir / "fashion" / "1"
    labels = rotated_copy(v1, rotated)
    return SimpleNamespace(v1=v1, rotated=rotated, labels=labels)


def start_all(replicas: list[Replica]) -> None:
    """Start replicas side by side (each loads TensorFlow: in parallel it takes half the time)."""
    errors: list[BaseException] = []

    def start(replica: Replica) -> None:
        try:
            replica.start()
        except BaseException as exc:  # re-raised below, after every thread is done
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for replica in replicas:
            replica.stop()
        raise errors[0]


def rotated_label(labels: list[str], label: str) -> str:
    return labels[(labels.index(label) + 1) % len(labels)]


def reference_labels(gw: stack.Gateway, images: list[bytes], model: str) -> list[str]:
    """Each image's top label under version 1 (asked while the fleet serves nothing else)."""
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        answers = [stub.Classify(pb.ClassifyRequest(model=model, image=image, version=1), timeout=30)
                   for image in images]
    return [a.predictions[0].label for a in answers]


def assert_versions_match_scores(answers, reference: list[str], labels: list[str]) -> None:
    for a in answers:
        want = reference[a.image] if a.version == 1 else rotated_label(labels, reference[a.image])
        assert a.label == want, f"image {a.image}: version {a.version} answered {a.label!r}, its scores say {want!r}"


# -- rolling updates and the pod canary --------------------------------------------------------------------

def test_rolling_update_across_three_replicas_fails_no_request(versions, images, tmp_path):
    """Every replica serves two models: `keep2` keeps its two newest versions loaded (the shipped
    models.config), `keep1` only its newest (TF Serving's default). Version 2 is dropped into one
    replica after the other while 8 calls stay in flight."""
    models = {"keep2": 2, "keep1": None}
    replicas = [Replica(tmp_path / f"replica-{i}", dict(models)) for i in range(3)]
    for replica in replicas:
        for model in models:
            publish(versions.v1, replica.base(model), 1)
    start_all(replicas)
    gw = None
    try:
        gw = stack.start_gateway(backend=fleet_target(replicas), extra_args=[
            "--default-model=keep2", "--health-check-interval-seconds=0.5"],
            env={**os.environ, "GATEWAY_MODELS": json.dumps({"keep1": {}})})
        reference = reference_labels(gw, images, "keep2")
        load = Load(gw.grpc_target, images, list(models), concurrency=8)
        dropped: list[float] = []
        phases: list[tuple[int, list, dict[str, float]]] = []

        async def roll() -> None:
            await wait_for(lambda: len(load.answers) >= 100, 60, "the load to start")
            for index, replica in enumerate(replicas):
                for model in models:
                    publish(versions.rotated, replica.base(model), 2)
                dropped.append(time.monotonic())
                await wait_for(lambda: served(gw.http_url, "keep1").get(replica.address) == {2}
                               and 2 in served(gw.http_url, "keep2").get(replica.address, set()), 60,
                               f"replica {index} to serve version 2")
                start, before = time.monotonic(), endpoint_images(gw.http_url, "keep1")
                need = 1000 if index == 0 else 300  # the first phase is the pod canary: one replica on v2
                await wait_for(lambda: len(load.since(start, "keep1")) >= need, 120, f"{need} answers")
                after = endpoint_images(gw.http_url, "keep1")
                phases.append((index, load.since(start, "keep1"),
                               {e: after.get(e, 0) - before.get(e, 0) for e in after}))
            done = time.monotonic()
            await wait_for(lambda: len([a for a in load.since(done, "keep2") if a.version == 2]) >= 200, 60,
                           "answers on version 2 after the rollout")

        asyncio.run(load.run(roll))
    finally:
        if gw is not None:
            gw.process.stop()
        for replica in replicas:
            replica.stop()

    failed = load.failed()
    print(f"\n{len(load.answers)} requests across the rollout, {len(failed)} failed")
    assert not failed, [(a.model, a.code, a.details) for a in failed[:5]]
    assert_versions_match_scores(load.answers, reference, versions.labels)

    # keep2 (two versions loaded): one switch v1 -> v2, after the last replica had v2, never back.
    keep2 = [a for a in load.answers if a.model == "keep2"]
    first_v2 = min(a.received for a in keep2 if a.version == 2)
    assert first_v2 > dropped[-1], "keep2 answered on version 2 before the last replica had it"
    back = [a for a in keep2 if a.sent > first_v2 and a.version != 2]
    assert not back, f"{len(back)} keep2 requests sent after the switch were answered by version 1"

    # keep1 (latest only): no replica idles at any point, and during the pod canary both versions answer.
    for index, answers, per_endpoint in phases:
        total = sum(per_endpoint.values())
        shares = {e: n / total for e, n in per_endpoint.items()}
        print(f"phase {index + 1}: {len(answers)} keep1 answers, versions "
              f"{sorted({a.version for a in answers})}, endpoint shares "
              f"{', '.join(f'{s:.0%}' for s in sorted(shares.values()))}")
        assert len(shares) == 3 and min(shares.values()) >= 0.20, shares
    canary_phase = phases[0][1]
    assert len(canary_phase) >= 1000 and {a.version for a in canary_phase} == {1, 2}


# -- a replica killed, a replica added --------------------------------------------------------------------

def test_a_replica_killed_or_added_under_load_fails_no_request(versions, images, tmp_path):
    replicas = [Replica(tmp_path / f"replica-{i}", {"fashion": None}) for i in range(3)]
    for replica in replicas:
        publish(versions.v1, replica.base("fashion"), 1)
    start_all(replicas[:2])
    config = tmp_path / "gateway.yaml"
    config.write_text(f"backend: {fleet_target(replicas[:2])}\n")
    gw = None
    try:
        gw = stack.start_gateway(backend=None, config_file=config, extra_args=[
            "--config-reload-seconds=0.2", "--health-check-interval-seconds=0.5"])
        load = Load(gw.grpc_target, images, ["fashion"], concurrency=8)
        added: dict[str, float] = {}

        async def kill_then_add() -> None:
            await wait_for(lambda: len(load.answers) >= 200, 60, "the load to start")
            replicas[1].server.process.proc.kill()
            killed = time.monotonic()
            await wait_for(lambda: len(load.since(killed)) >= 400, 60, "answers after the kill")
            await asyncio.to_thread(replicas[2].start)
            config.write_text(f"backend: {fleet_target([replicas[0], replicas[2]])}\n")
            changed = time.monotonic()
            await wait_for(lambda: endpoint_images(gw.http_url, "fashion").get(replicas[2].address, 0) > 0, 30,
                           "the new replica to answer")
            added["after"] = time.monotonic() - changed
            await wait_for(lambda: len(load.since(time.monotonic() - 1)) >= 100, 60, "answers after the change")

        asyncio.run(load.run(kill_then_add))
        fleet = httpx.get(f"{gw.http_url}/v1/fleet", timeout=10).json()
    finally:
        if gw is not None:
            gw.process.stop()
        for replica in replicas:
            replica.stop()

    failed = load.failed()
    print(f"\n{len(load.answers)} requests, a replica killed and one added: {len(failed)} failed; "
          f"the new replica answered {added['after']:.2f} s after the config named it")
    assert not failed, [(a.code, a.details) for a in failed[:5]]
    assert added["after"] < 5.0
    assert sorted(e["address"] for e in fleet["endpoints"]) == sorted([replicas[0].address, replicas[2].address])
    default = Settings().max_concurrent_batches
    assert fleet["models"]["fashion"]["max_batches_in_flight"] == 2 * default, "per endpoint serving it"


# -- versions and labels chosen by the caller; the canary's share --------------------------------------------

@pytest.fixture(scope="module")
def labelled(versions, tmp_path_factory):
    """Replica A serves versions 1 and 2, replica B version 1; labels stable=1, canary=2, and a 10 % canary."""
    root = tmp_path_factory.mktemp("labelled")
    a, b = Replica(root / "a", {"fashion": 2}), Replica(root / "b", {"fashion": None})
    publish(versions.v1, a.base("fashion"), 1)
    publish(versions.rotated, a.base("fashion"), 2)
    publish(versions.v1, b.base("fashion"), 1)
    start_all([a, b])
    config = root / "gateway.yaml"
    config.write_text(json.dumps({"backend": fleet_target([a, b]), "models": {"fashion": {
        "labels": {"stable": 1, "canary": 2}, "canary": {"label": "canary", "percent": 10}}}}))
    try:
        gw = stack.start_gateway(backend=None, config_file=config)
    except BaseException:
        a.stop()
        b.stop()
        raise
    yield SimpleNamespace(gateway=gw, a=a, b=b)
    gw.process.stop()
    a.stop()
    b.stop()


def test_versions_and_labels_chosen_by_the_caller_over_grpc_and_rest(labelled, versions, images):
    gw = labelled.gateway
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.ClassifierStub(channel)

        def classify(**kwargs) -> pb.ClassifyResponse:
            return stub.Classify(pb.ClassifyRequest(image=images[0], **kwargs), timeout=30)

        v1, v2 = classify(version=1), classify(version=2)
        assert (v1.model_version, v2.model_version) == (1, 2)
        assert v2.predictions[0].label == rotated_label(versions.labels, v1.predictions[0].label)
        assert classify(version_label="stable").model_version == 1
        assert classify(version_label="canary").model_version == 2
        for kwargs, code, words in [({"version": 7}, grpc.StatusCode.NOT_FOUND, "serves versions 1, 2"),
                                    ({"version_label": "nope"}, grpc.StatusCode.NOT_FOUND, "labels: canary, stable"),
                                    ({"version": 1, "version_label": "stable"}, grpc.StatusCode.INVALID_ARGUMENT, "not both")]:
            with pytest.raises(grpc.RpcError) as err:
                classify(**kwargs)
            assert err.value.code() == code and words in err.value.details(), (kwargs, err.value.details())

    def rest(path: str) -> httpx.Response:
        return httpx.post(f"{gw.http_url}{path}", content=images[0], headers={"content-type": "image/png"}, timeout=30)

    assert rest("/v1/models/fashion/versions/2:classify").json()["model_version"] == 2
    assert rest("/v1/models/fashion/labels/stable:classify").json()["model_version"] == 1
    missing = rest("/v1/models/fashion/versions/7:classify")
    assert missing.status_code == 404 and "serves versions 1, 2" in missing.json()["error"]["message"]
    unlabelled = rest("/v1/models/fashion/labels/nope:classify")
    assert unlabelled.status_code == 404 and "canary, stable" in unlabelled.json()["error"]["message"]
    # Version 2 only ever went to the replica that serves it.
    assert {e for e, n in endpoint_images(gw.http_url, "fashion").items() if n} >= {labelled.a.address}
    lines = [line for line in httpx.get(f"{gw.http_url}/metrics", timeout=10).text.splitlines()
             if line.startswith("gateway_endpoint_images_total") and 'version="2"' in line]
    assert lines and all(labelled.a.address in line for line in lines), lines


def test_a_canary_gets_its_share_within_two_points_and_sticks_per_key(labelled, images):
    gw = labelled.gateway

    async def versions_of(requests: list[tuple]) -> list[int]:
        async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            limit = asyncio.Semaphore(16)

            async def one(metadata: tuple) -> int:
                async with limit:
                    answer = await stub.Classify(pb.ClassifyRequest(image=images[1]), timeout=30, metadata=metadata)
                    return answer.model_version

            return await asyncio.gather(*(one(m) for m in requests))

    anonymous = asyncio.run(versions_of([()] * 2000))
    keyed = asyncio.run(versions_of([(("x-canary-key", f"caller-{i}"),) for i in range(2000)]))
    again = asyncio.run(versions_of([(("x-canary-key", f"caller-{i}"),) for i in range(200)] * 3))
    share, keyed_share = anonymous.count(2) / 2000, keyed.count(2) / 2000
    print(f"\ncanary 10 %: {share:.1%} of 2,000 requests without a key, {keyed_share:.1%} of 2,000 keys")
    assert set(anonymous) | set(keyed) == {1, 2}
    assert abs(share - 0.10) <= 0.02 and abs(keyed_share - 0.10) <= 0.02
    assert again[:200] == again[200:400] == again[400:] == keyed[:200], "a key changed sides"


# -- the shadow verdict --------------------------------------------------------------------------------------

def test_a_shadow_never_slows_the_answer_and_its_verdict_follows_agreement(versions, images, tmp_path):
    """A serves version 1 (default traffic, pinned), B version 2 = an identical copy, C version 3 =
    the rotated copy. Shadowing 2 says PROMOTE; B stopped (SIGSTOP) leaves the answers' latency as
    it was; shadowing 3 says HOLD."""
    replicas = {name: Replica(tmp_path / name, {"fashion": None}) for name in ("a", "b", "c")}
    publish(versions.v1, replicas["a"].base("fashion"), 1)
    publish(versions.v1, replicas["b"].base("fashion"), 2)
    publish(versions.rotated, replicas["c"].base("fashion"), 3)
    start_all(list(replicas.values()))
    config = tmp_path / "gateway.yaml"

    def configure(shadow_version: int) -> None:
        config.write_text(json.dumps({"backend": fleet_target(list(replicas.values())), "models": {"fashion": {
            "default_version": {"version": 1}, "shadow": {"version": shadow_version, "percent": 100}}}}))

    configure(2)
    gw = None
    stopped = {"b": False}
    try:
        gw = stack.start_gateway(backend=None, config_file=config, extra_args=[
            "--config-reload-seconds=0.2", "--backend-timeout-seconds=1", "--health-check-interval-seconds=0.5"])
        load = Load(gw.grpc_target, images, ["fashion"], concurrency=4)
        marks: dict[str, float] = {}
        report: dict[str, subprocess.CompletedProcess] = {}

        async def scenario() -> None:
            await wait_for(lambda: len(load.answers) >= 300, 60, "shadowed answers")
            report["promote"] = await asyncio.to_thread(canary_report, gw, "--min-samples=200")
            marks["normal"] = time.monotonic()
            await wait_for(lambda: len(load.since(marks["normal"])) >= 300, 60, "answers")
            replicas["b"].server.process.signal(signal.SIGSTOP)
            stopped["b"] = True
            marks["stopped"] = time.monotonic()
            await wait_for(lambda: len(load.since(marks["stopped"])) >= 300, 60, "answers with the shadow stopped")
            marks["resumed"] = time.monotonic()
            replicas["b"].server.process.signal(signal.SIGCONT)
            stopped["b"] = False
            configure(3)
            await wait_for(lambda: (httpx.get(f"{gw.http_url}/v1/fleet", timeout=10).json()["models"]["fashion"]
                                    ["shadow"] or {}).get("version") == 3, 30, "the shadow to move to version 3")
            start = time.monotonic()
            await wait_for(lambda: len(load.since(start)) >= 300, 60, "answers shadowed by version 3")
            report["hold"] = await asyncio.to_thread(canary_report, gw, "--min-samples=200")

        asyncio.run(load.run(scenario))
        metrics = httpx.get(f"{gw.http_url}/metrics", timeout=10).text
    finally:
        if gw is not None:
            gw.process.stop()
        if stopped["b"]:
            replicas["b"].server.process.signal(signal.SIGCONT)
        for replica in replicas.values():
            replica.stop()

    failed = load.failed()
    assert not failed, [(a.code, a.details) for a in failed[:5]]
    assert {a.version for a in load.answers} == {1}, "default traffic must stay on the pinned version"
    normal = sorted(a.received - a.sent for a in load.answers if marks["normal"] <= a.sent < marks["stopped"])
    paused = sorted(a.received - a.sent for a in load.answers if marks["stopped"] <= a.sent < marks["resumed"])
    p99 = lambda xs: xs[int(len(xs) * 0.99) - 1]  # noqa: E731
    print(f"\nanswer p99 {p99(normal) * 1000:.1f} ms with the shadow replica running, "
          f"{p99(paused) * 1000:.1f} ms with it stopped")
    assert p99(paused) <= max(3 * p99(normal), p99(normal) + 0.05), "a stopped shadow slowed the answers"
    assert 'gateway_shadow_comparisons_total{candidate_version="2",decision="same",model="fashion",top1="same"}' in metrics
    assert report["promote"].returncode == 0 and "PROMOTE" in report["promote"].stdout, report["promote"].stdout
    assert report["hold"].returncode == 1 and "HOLD" in report["hold"].stdout, report["hold"].stdout
    assert "fashion v3: decisions agree" in report["hold"].stdout


def canary_report(gw: stack.Gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.canary_report", f"--metrics-url={gw.http_url}/metrics",
                           "--model=fashion", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)

