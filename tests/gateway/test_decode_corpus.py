"""Pillow's own test images, every one sent to a real gateway over REST and over gRPC.

Pillow's source distribution ships `Tests/images`: about 1,060 files of every format it reads,
including fuzzer crash cases, truncated files and decompression bombs — a ready hostile corpus
for the decoder. The sdist of the installed Pillow version is fetched once with pip (PyPI) and
its images are cached under pytest's cache folder, keyed by the version.

One gateway in front of the session's model server accepts every format Pillow can open
(`allowed_formats`), so every decoder is reached. For each file: no 5xx and no INTERNAL/UNKNOWN,
the gateway still alive afterwards, REST and gRPC agree (status, and the message of a rejection,
or the label of an answer), and every rejection has a plain message (no traceback, no exception
class name).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import PIL
import pytest
from PIL import Image

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tools import stack

pytestmark = pytest.mark.slow

CONCURRENCY = 8
MIN_FILES = 1000  # Pillow 13 ships about 1,060; far fewer means the download or extraction went wrong
# REST status -> the gRPC code of the same error (gateway/errors.py has the one table).
SAME_ERROR = {200: "OK", 400: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED"}
NOT_PLAIN = re.compile(r"Traceback|File \"|\w+(Error|Exception)\b|0x[0-9a-f]{6,}")


@pytest.fixture(scope="module")
def corpus(request) -> list[Path]:
    """The files of Tests/images from the sdist of the installed Pillow, cached per version."""
    version = PIL.__version__
    folder = Path(request.config.cache.mkdir(f"pillow-{version}-test-images"))
    done = folder / ".complete"
    if not done.exists():
        with tempfile.TemporaryDirectory() as tmp:
            pip = subprocess.run([sys.executable, "-m", "pip", "download", f"pillow=={version}", "--no-binary",
                                  ":all:", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", tmp],
                                 capture_output=True, text=True, timeout=600)
            sdists = list(Path(tmp).glob("pillow-*.tar.gz"))
            if pip.returncode != 0 or not sdists:
                pytest.fail(f"pip could not download Pillow {version}'s sdist (PyPI needed): {pip.stderr[-2000:]}")
            images = folder / "images"
            shutil.rmtree(images, ignore_errors=True)
            with tarfile.open(sdists[0]) as sdist:
                members = [m for m in sdist.getmembers() if m.isfile() and "/Tests/images/" in m.name]
                for member in members:
                    target = images / member.name.split("/Tests/images/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with sdist.extractfile(member) as src:
                        target.write_bytes(src.read())
        done.write_text(version)
    files = sorted(p for p in (folder / "images").rglob("*") if p.is_file())
    assert len(files) >= MIN_FILES, f"only {len(files)} files in {folder}"
    return files


@pytest.fixture(scope="module")
def every_format_gateway(model_server):
    Image.init()
    env = {**os.environ, "GATEWAY_ALLOWED_FORMATS": ",".join(sorted(Image.OPEN))}
    gw = stack.start_gateway(backend=model_server.grpc_target, env=env)
    yield gw
    gw.process.stop()


def _rest(client: httpx.Client, path: Path) -> tuple[int, str]:
    response = client.post("/v1/classify", files={"image": (path.name, path.read_bytes(), "application/octet-stream")})
    body = response.json()
    return response.status_code, body["label"] if response.status_code == 200 else body["error"]["message"]


def _grpc(stub, path: Path) -> tuple[str, str]:
    try:
        answer = stub.Classify(pb.ClassifyRequest(image=path.read_bytes()), timeout=60)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", answer.label


def test_every_pillow_test_image_gets_a_plain_client_answer_on_both_transports(corpus, every_format_gateway):
    gw = every_format_gateway
    options = [("grpc.max_send_message_length", 32 * 2**20)]
    with grpc.insecure_channel(gw.grpc_target, options=options) as channel, \
            httpx.Client(base_url=gw.http_url, timeout=60) as client:
        stub = pb_grpc.ClassifierStub(channel)

        def both(path: Path) -> tuple[Path, tuple[int, str], tuple[str, str]]:
            return path, _rest(client, path), _grpc(stub, path)

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(both, corpus))

    problems = []
    for path, (status, rest_text), (code, grpc_text) in results:
        name = path.name
        if status >= 500 or code in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
            problems.append(f"{name}: REST {status} {rest_text!r}, gRPC {code} {grpc_text!r}")
        elif SAME_ERROR.get(status) != code or rest_text != grpc_text:
            problems.append(f"{name}: REST and gRPC disagree: {status} {rest_text!r} vs {code} {grpc_text!r}")
        elif status != 200 and (not rest_text or NOT_PLAIN.search(rest_text)):
            problems.append(f"{name}: not a plain message: {rest_text!r}")
    assert not problems, f"{len(problems)} of {len(results)} files:\n" + "\n".join(problems[:40])
    assert gw.process.returncode is None, "the gateway died:\n" + gw.process.output()
    assert httpx.get(f"{gw.http_url}/healthz", timeout=10).status_code == 200
    accepted = sum(1 for _, (status, _), _ in results if status == 200)
    assert accepted > 400, f"only {accepted} of {len(results)} images classified: is the decoder refusing valid ones?"
