"""The README cannot rot: its settings tables are rendered from the settings model, and the example
calls under "Using it" run against a live stack exactly as written (ports rewritten)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tools import settings_doc

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_settings_tables_match_the_settings_model():
    assert settings_doc.replace_in(README) == README, "run: python -m tools.settings_doc --write"


def _usage_commands() -> list[str]:
    """The commands of the first bash block under "## Using it", continuation lines joined."""
    section = README.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _on(gateway, command: str) -> str:
    """Point the command at the test's gateway: rewrite the default addresses, or name a target."""
    if "gateway.client" in command and "--target" not in command:
        target = gateway.http_url if "--rest" in command else gateway.grpc_target
        command = command.replace("gateway.client", f"gateway.client --target {target}", 1)
    return (command.replace("http://127.0.0.1:8080", gateway.http_url)
                   .replace("127.0.0.1:50051", gateway.grpc_target))


def test_readme_lists_curl_client_and_grpcurl_examples():
    kinds = {c.split()[0] for c in _usage_commands()}
    assert {"curl", ".venv/bin/python", "grpcurl"} <= kinds


@pytest.mark.parametrize("command", [c for c in _usage_commands() if not c.startswith("grpcurl")])
def test_readme_example_runs(gateway, command):
    done = subprocess.run(["bash", "-c", _on(gateway, command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    if command.startswith("curl"):
        answer = json.loads(done.stdout)
        assert "error" not in answer
        assert "models" in answer or answer["predictions"], answer
    if "--json" in command:
        json.loads(done.stdout)


@pytest.mark.parametrize("command", [c for c in _usage_commands() if c.startswith("grpcurl")])
def test_readme_grpcurl_example(gateway, command):
    """Run grpcurl where it is installed; otherwise check what it relies on, over reflection."""
    if shutil.which("grpcurl"):
        done = subprocess.run(["bash", "-c", _on(gateway, command)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
        services = {s.name for s in answer.list_services_response.service}
        assert "classifier.v1.Classifier" in services
        method = re.search(r"(classifier\.v1\.Classifier)/(\w+)", command)
        if method:
            request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=method.group(1))
            (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
            assert answer.file_descriptor_response.file_descriptor_proto
