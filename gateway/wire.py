"""The gateway's wire-compatible subset of the TF Serving API (generated from protos/tfserving_wire).

Import the generated messages through this module only. The subset declares `tensorflow.TensorProto`,
`tensorflow.serving.PredictRequest` & co. in protobuf's default descriptor pool, exactly as
TensorFlow's own modules do, and the pool refuses a second definition: the subset and TensorFlow
cannot live in one process. The gateway never imports TensorFlow; a process that already has (a
test, a notebook) gets a clear ImportError here instead of a cryptic descriptor-pool failure.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool


def _tensorproto_owner() -> str | None:
    """The .proto file that defined tensorflow.TensorProto in this process, if any did."""
    try:
        return descriptor_pool.Default().FindFileContainingSymbol("tensorflow.TensorProto").name
    except KeyError:
        return None


_OWNER = _tensorproto_owner()
if _OWNER is not None and _OWNER != "tfserving_wire/tensor.proto":
    raise ImportError(
        "gateway.wire (the TF Serving wire subset) cannot be imported in a process that has "
        f"imported TensorFlow or tensorflow_serving.apis ({_OWNER} already defines "
        "tensorflow.TensorProto in protobuf's default pool). Run the gateway code in its own "
        "process (see the process rule in tests/conftest.py)."
    )

import gateway.generated  # noqa: E402,F401  (puts the generated tree on sys.path)
from tfserving_wire import serving_apis_pb2 as apis  # noqa: E402
from tfserving_wire import serving_apis_pb2_grpc as apis_grpc  # noqa: E402
from tfserving_wire import tensor_pb2 as tensor  # noqa: E402

__all__ = ["apis", "apis_grpc", "tensor"]
