"""The gateway's layers, as docs/architecture.md states them, checked against its imports: a module
imports gateway modules of its own layer or the layers above, and the inner layers stay free of the
transports' libraries."""

from __future__ import annotations

import ast
from pathlib import Path
import pytest

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"

# Layer by layer, from the innermost; the same table is in docs/architecture.md.
LAYERS = [
    {"types", "errors", "settings", "thresholds", "targets", "routing", "callers", "resilience"},
    {"batcher", "decode", "tensors", "wire", "status", "metrics", "logs", "auth", "tls", "tracing", "workers", "generated"},
    {"backend", "fleet"},
    {"registry", "shadow", "core"},
    {"converters", "grpc_interceptors", "grpc_service", "rest", "rest_routes", "rest_requests", "rest_middleware",
     "rest_schemas", "rest_openapi"},
    {"server", "reload", "canary_report", "client", "__main__", "__init__"},
]

TRANSPORT_LIBRARIES = {"fastapi", "starlette", "uvicorn"}


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def imports(path: Path) -> set[str]:
    """Top-level names of what a module imports, anywhere but under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if getattr(node.test, "id", "") != "TYPE_CHECKING":
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and not node.level:
                found.add(node.module)
                if node.module == "gateway":
                    found.update(f"gateway.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def test_every_gateway_module_has_a_layer():
    modules = {p.stem for p in GATEWAY.glob("*.py")}
    assert modules <= set().union(*LAYERS), modules - set().union(*LAYERS)


def test_modules_import_only_their_own_layer_or_inner_ones():
    wrong = []
    for path in sorted(GATEWAY.glob("*.py")):
        mine = layer_of(path.stem)
        for name in imports(path):
            if name.startswith("gateway."):
                other = name.split(".")[1]
                if layer_of(other) > mine:
                    wrong.append(f"{path.stem} (layer {mine}) imports {other} (layer {layer_of(other)})")
            elif name.split(".")[0] in TRANSPORT_LIBRARIES and mine < 4:
                wrong.append(f"{path.stem} (layer {mine}) imports {name}, a transport library")
    assert not wrong, "\n".join(wrong)
