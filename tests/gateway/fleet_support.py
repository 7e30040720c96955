"""Helpers for the fleet tests: model server replicas with their own model directories, a version
of the tiny model whose labels are rotated (so every answer tells which version produced it), and
a load that records every answer.

The replicas are real `python -m serving` processes on free ports, each reading its own
ModelServerConfig; a new version reaches a replica the way training publishes one: copied beside
the base path, then renamed into it (atomic).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tools import stack


def rotated_copy(src: Path, dst: Path) -> list[str]:
    """Export `src` (a SavedModel version) again at `dst` with every label moved one place: the
    scores stay, so an image's top label under the copy is the next label of the original's.
    Returns the original labels."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(src))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    blank = tf.zeros([1, *spec.shape[1:]], spec.dtype)
    labels = [label.decode() for label in serve(images=blank)["classes"].numpy()[0]]

    class Rotated(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = loaded
            self.labels = tf.constant(labels[1:] + labels[:1])

        @tf.function(input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name="images")])
        def serve(self, images):
            outputs = dict(self.inner.signatures["serving_default"](images=images))
            outputs["classes"] = tf.tile(self.labels[tf.newaxis, :], [tf.shape(images)[0], 1])
            return outputs

    module = Rotated()
    tf.saved_model.save(module, str(dst), signatures={"serving_default": module.serve})
    return labels


def publish(version_dir: Path, base: Path, version: int) -> None:
    """Copy a SavedModel into `base/<version>` atomically, as training publishes a version."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base.parent / f".staging-{base.name}-{version}"
    shutil.copytree(version_dir, staging)
    staging.rename(base / str(version))


@dataclass
class Replica:
    """One `python -m serving` with its own models directory and config file."""

    root: Path
    models: dict[str, int | None]           # model name -> versions kept (None: TF Serving's default, latest 1)
    server: stack.ModelServer | None = None

    def base(self, model: str) -> Path:
        return self.root / model

    def start(self, extra_args: tuple[str, ...] = ()) -> "Replica":
        config = self.root / "models.config"
        entries = []
        for name, keep in self.models.items():
            self.base(name).mkdir(parents=True, exist_ok=True)
            policy = f" model_version_policy {{ latest {{ num_versions: {keep} }} }}" if keep else ""
            entries.append(f'config {{ name: "{name}" base_path: "{self.base(name)}" '
                           f'model_platform: "tensorflow"{policy} }}')
        config.write_text("model_config_list {\n  " + "\n  ".join(entries) + "\n}\n")
        self.server = stack.start_model_server(model_config_file=config, models=list(self.models),
                                               extra_args=["--file_system_poll_wait_seconds=1", *extra_args])
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.grpc_target

    def available(self, model: str) -> set[int]:
        assert self.server is not None
        body = httpx.get(f"{self.server.rest_url}/v1/models/{model}", timeout=10).json()
        return {int(v["version"]) for v in body.get("model_version_status", []) if v["state"] == "AVAILABLE"}

    def stop(self) -> None:
        if self.server is not None:
            self.server.process.stop()


def fleet_target(replicas: list[Replica]) -> str:
    return "ipv4:" + ",".join(r.address for r in replicas)


def endpoint_images(http_url: str, model: str) -> dict[str, float]:
    """Images each endpoint answered for `model`, from the gateway's metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("gateway_endpoint_images_total{") and f'model="{model}"' in line:
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[endpoint] = out.get(endpoint, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def served(http_url: str, model: str) -> dict[str, set[int]]:
    """What GET /v1/fleet says each healthy endpoint serves (usable versions) of `model`."""
    fleet = httpx.get(f"{http_url}/v1/fleet", timeout=10).json()
    return {e["address"]: {v["version"] for v in e["models"].get(model, []) if v["usable"] and v["state"] == "AVAILABLE"}
            for e in fleet["endpoints"] if e["state"] == "healthy"}


@dataclass
class Answer:
    model: str
    image: int               # index into the load's images
    sent: float
    received: float
    version: int = 0
    label: str = ""          # the top prediction's label
    code: str = "OK"
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass
class Load:
    """Keeps `concurrency` Classify calls in flight over gRPC (models taken in turn) until stopped."""

    target: str
    images: list[bytes]
    models: list[str]
    concurrency: int = 8
    metadata: tuple = ()
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    async def run(self, until) -> None:
        """Run until `await until()` returns."""
        self._stop = asyncio.Event()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            workers = [asyncio.create_task(self._worker(stub, i)) for i in range(self.concurrency)]
            try:
                await until()
            finally:
                self._stop.set()
                await asyncio.gather(*workers)

    async def _worker(self, stub, index: int) -> None:
        n = index
        while not self._stop.is_set():
            model = self.models[n % len(self.models)]
            image = n % len(self.images)
            n += self.concurrency
            sent = time.monotonic()
            try:
                response = await stub.Classify(pb.ClassifyRequest(model=model, image=self.images[image]),
                                               timeout=30, metadata=self.metadata)
            except grpc.aio.AioRpcError as err:
                self.answers.append(Answer(model, image, sent, time.monotonic(), code=err.code().name,
                                           details=err.details()))
                continue
            self.answers.append(Answer(model, image, sent, time.monotonic(), response.model_version,
                                       response.predictions[0].label))

    def since(self, moment: float, model: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.sent >= moment and (model is None or a.model == model)]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]


async def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    """Inside a running load: poll another process until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
