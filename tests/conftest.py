"""Shared fixtures: Fashion-MNIST test images, a small trained model, a running model server and a
running gateway. The helpers they use are in tests/helpers.py.

Layout: the folders mirror the code (gateway/, serving/, training/, client/, deploy/, loadtest/,
hardening/, browser/). One process may import TensorFlow, its official tensorflow_serving.apis
stubs and every gateway module: the gateway's TF Serving subset lives in a private descriptor pool
(gateway/wire.py). Modules marked `unit` (`pytestmark = pytest.mark.unit`) test pure units
in-process, with no model and no server: `make test-fast` runs just those.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import fashion_test_images, png
from tools import stack

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
COMMITTED_MODELS = ROOT / "models"

# Quiet TensorFlow's C++ start-up chatter in every child process.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_training(models_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m training` as a user would; returns the completed process (check=True)."""
    report_dir = models_dir.parent / f"report-{models_dir.name}"  # keep reports out of the repo
    cmd = [sys.executable, "-m", "training", "--models-dir", str(models_dir), "--report-dir", str(report_dir), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=True)


@pytest.fixture(scope="session")
def fashion_data() -> Path:
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{FASHION_DIR} missing: apt-get install dataset-fashion-mnist (CI installs it)")
    return FASHION_DIR


@pytest.fixture(scope="session")
def images(fashion_data) -> list[bytes]:
    """The first 300 Fashion-MNIST test images as PNGs (never trained on)."""
    return [png(p) for p in fashion_test_images(fashion_data, 300)]


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory, fashion_data) -> Path:
    """A models dir holding `fashion/1`, trained for one short epoch on a slice by the real CLI."""
    models = tmp_path_factory.mktemp("models")
    run_training(models, "--epochs", "1", "--limit", "2048", "--batch-size", "128", "--seed", "7",
                 "--model-name", "fashion")
    assert (models / "fashion" / "1" / "saved_model.pb").exists()
    return models


@pytest.fixture(scope="session")
def committed_model() -> Path:
    """The committed default model, models/fashion/1."""
    path = COMMITTED_MODELS / "fashion" / "1"
    if not (path / "saved_model.pb").exists():
        pytest.fail("models/fashion/1 is not committed yet: run `make train-full` and commit it")
    return path


@pytest.fixture(scope="session")
def model_server(tiny_models_dir, tmp_path_factory):
    """`python -m serving` on free ports serving a copy of the tiny model as `fashion`."""
    base = tmp_path_factory.mktemp("served") / "fashion"
    shutil.copytree(tiny_models_dir / "fashion", base)
    server = stack.start_model_server(model_name="fashion", model_base_path=base,
                                      extra_args=["--file_system_poll_wait_seconds=1"])
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def gateway(model_server):
    """`python -m gateway` on free ports in front of the session's model server."""
    gw = stack.start_gateway(backend=model_server.grpc_target)
    yield gw
    gw.process.stop()


def pytest_configure(config):
    """A SIGTERM (a CI timeout, `timeout pytest ...`) ends the run like Ctrl-C: fixtures tear down
    and every server a test started is stopped (tools/stack.py stops any left at exit)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
