"""Loading one SavedModel version: its SignatureDefs (for metadata) and callable signatures.

The SignatureDefs come from `saved_model.pb` itself, exactly what TF Serving's GetModelMetadata
returns (including `__saved_model_init_op`); the callables are the concrete functions
`tf.saved_model.load` restores, called directly for every request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.errors import ServingError
from serving.signatures import Signature

log = logging.getLogger(__name__)

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class LoadError(ServingError):
    """A version that cannot be loaded; its code and message become the version's END status."""

    @classmethod
    def from_exception(cls, exc: BaseException) -> "LoadError":
        if isinstance(exc, ServingError):
            return cls(exc.code, exc.message)
        if isinstance(exc, tf.errors.OpError):
            return cls(_GRPC_CODES.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message)
        if isinstance(exc, FileNotFoundError):
            return cls(grpc.StatusCode.NOT_FOUND, str(exc))
        if isinstance(exc, protobuf_message.DecodeError):
            return cls(grpc.StatusCode.DATA_LOSS, f"cannot parse the SavedModel: {exc}")
        return cls(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


def read_meta_graph(path: Path, tags: frozenset[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged exactly `tags` from `saved_model.pb` (or `.pbtxt`)."""
    saved_model = saved_model_pb2.SavedModel()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    if binary.exists():
        saved_model.ParseFromString(binary.read_bytes())
    elif text.exists():
        text_format.Parse(text.read_text(encoding="utf-8"), saved_model)
    else:
        raise LoadError(grpc.StatusCode.NOT_FOUND,
                        f"SavedModel not found in export directory: {path} (no saved_model.pb)")
    for meta_graph in saved_model.meta_graphs:
        if frozenset(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise LoadError(grpc.StatusCode.NOT_FOUND,
                    f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(tags))} }} "
                    f"in {path}; available tag sets: {available}")


class LoadedModel:
    """A loaded version: the restored object (kept alive), its signatures and SignatureDefs."""

    def __init__(self, path: Path, restored: object, meta_graph: meta_graph_pb2.MetaGraphDef):
        self.path = path
        self._restored = restored  # the concrete functions live as long as this object
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in meta_graph.signature_def.items():
            self.signature_defs.signature_def[name].CopyFrom(signature_def)
        functions = getattr(restored, "signatures", {})
        self._signatures = {name: Signature(name, meta_graph.signature_def[name], functions[name])
                            for name in meta_graph.signature_def if name in functions}

    @classmethod
    def load(cls, path: Path, tags: frozenset[str]) -> "LoadedModel":
        """Read and restore the SavedModel at `path` (blocking: call from a worker thread)."""
        meta_graph = read_meta_graph(path, tags)
        restored = tf.saved_model.load(str(path), tags=sorted(tags))
        return cls(path, restored, meta_graph)

    def signature(self, name: str) -> Signature | None:
        return self._signatures.get(name)
