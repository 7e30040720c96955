"""What the tests share, in one place: waiting on another process, free ports, Fashion-MNIST test
images, the gateway's metrics seen from outside, and the answer shapes the tests compare.

Fixtures built on these (`images`, a trained tiny model, a model server, a gateway) are in
tests/conftest.py.
"""

from __future__ import annotations

import gzip
import io
import re
import socket
import time
from pathlib import Path
from typing import Callable

import httpx
from PIL import Image

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb

from tools import stack

EXAMPLES = list(stack.example_images())  # examples/**: the bundled images, file names say their class
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]


def example(name: str) -> Path:
    """The bundled example image with this file name."""
    return next(p for p in EXAMPLES if p.name == name)


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll another process until `condition()` is truthy; there is nothing local to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A port nothing listens on now (for a process that must come back on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fashion_test_images(data_dir: Path, count: int) -> list[bytes]:
    """The first `count` Fashion-MNIST test images as raw 28x28 grey pixels."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read(16 + 784 * count)
    return [raw[16 + 784 * i:16 + 784 * (i + 1)] for i in range(count)]


def png(pixels: bytes, size: tuple[int, int] = (28, 28)) -> bytes:
    """Raw grey pixels as an 8-bit grey PNG."""
    buf = io.BytesIO()
    Image.frombytes("L", size, pixels).save(buf, "PNG")
    return buf.getvalue()


def samples(http_url: str, name: str, headers: dict | None = None) -> list[tuple[dict, float]]:
    """(labels, value) for every sample of metric `name` on the gateway's /metrics page."""
    text = httpx.get(f"{http_url}/metrics", timeout=10, headers=headers).text
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")), float(m.group(2))))
    return out


def metric(http_url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """Sum of the samples of `name` on the gateway's /metrics whose labels include `labels`."""
    return sum(value for found, value in samples(http_url, name, headers) if labels.items() <= found.items())


def answer_json(response: pb.ClassifyResponse) -> dict:
    """A ClassifyResponse in the REST API's JSON shape."""
    return {"model": response.model, "model_version": response.model_version, "label": response.label,
            "confident": response.confident, "reason": pb.ClassifyResponse.Reason.Name(response.reason),
            "predictions": [{"label": p.label, "score": p.score} for p in response.predictions]}


def assert_same_answers(got: list[dict], want: list[dict], tolerance: float = 1e-5) -> None:
    """Equal decisions and labels; scores equal up to float noise (a batch of 8 and a batch of 1
    may round differently inside the model)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "predictions"} == {k: v for k, v in w.items() if k != "predictions"}
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in w["predictions"]]
        assert all(abs(a["score"] - b["score"]) <= tolerance for a, b in zip(g["predictions"], w["predictions"]))
