"""A SavedModel signature: its declared inputs and outputs, request validation, and the call.

Validation happens before the model runs, with TF Serving's messages and codes, so a bad request
never reaches TensorFlow (a concrete function silently accepts some wrong shapes, and an error
from inside a graph is a poor message). The call goes through the signature's concrete function
loaded once with the version: no per-request tracing or graph building.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import tensors
from serving.errors import ServingError, invalid_argument

DEFAULT_SIGNATURE = "serving_default"

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class TensorSpec:
    """dtype enum and shape of a signature tensor; `shape` None for unknown rank, dims None when unknown."""

    dtype: int
    shape: tuple[int | None, ...] | None

    @classmethod
    def from_tensor_info(cls, info: meta_graph_pb2.TensorInfo) -> "TensorSpec":
        if info.tensor_shape.unknown_rank:
            return cls(info.dtype, None)
        return cls(info.dtype, tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim))

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(want is None or want == got for want, got in zip(self.shape, shape))


def _keys(names: Iterable[str]) -> str:
    return ",".join(sorted(names))


class Signature:
    """One callable signature of a loaded version."""

    def __init__(self, name: str, signature_def: meta_graph_pb2.SignatureDef, function: Callable):
        self.name = name
        self.method_name = signature_def.method_name
        self.inputs = {alias: TensorSpec.from_tensor_info(info) for alias, info in signature_def.inputs.items()}
        self.outputs = {alias: TensorSpec.from_tensor_info(info) for alias, info in signature_def.outputs.items()}
        self._function = function
        self._input_order = sorted(self.inputs)

    # --- request validation -------------------------------------------------------------------

    def check_input_names(self, names: Iterable[str]) -> None:
        """TF Serving's VerifyRequestInputsSize and alias checks."""
        sent = set(names)
        expected = set(self.inputs)
        if len(sent) != len(expected):
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_keys(sent)}}}) != "
                f"len({{{_keys(expected)}}}). Sent extra: {{{_keys(sent - expected)}}}. "
                f"Missing but required: {{{_keys(expected - sent)}}}.")
        for alias in sorted(sent - expected):
            raise invalid_argument(f"input tensor alias not found in signature: {alias}. "
                                   f"Inputs expected to be in the set {{{_keys(expected)}}}.")

    def check_input_array(self, alias: str, array: np.ndarray) -> None:
        """dtype and shape of one input against the signature."""
        spec = self.inputs[alias]
        want = tensors.dtype(spec.dtype)
        if array.dtype != want.numpy:
            got = tensors.dtype_name_of_numpy(array.dtype)
            raise invalid_argument(f"Expects arg[{self._input_order.index(alias)}] to be {want.name} "
                                   f"but {got} is provided")
        if not spec.accepts_shape(array.shape):
            raise invalid_argument(f"input tensor '{alias}' has shape {tensors.shape_text(array.shape)}, "
                                   f"the signature '{self.name}' expects {tensors.shape_text(spec.shape)}")

    def validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        self.check_input_names(inputs)
        for alias, array in inputs.items():
            self.check_input_array(alias, array)

    def decode_inputs(self, protos: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, np.ndarray]:
        """PredictRequest.inputs -> arrays (gRPC Predict and warm-up replay); validate them before running."""
        self.check_input_names(protos)
        arrays = {}
        for alias, proto in protos.items():
            try:
                arrays[alias] = tensors.to_ndarray(proto)
            except ValueError as exc:
                raise invalid_argument(f"tensor parsing error: {alias} ({exc})") from exc
        return arrays

    def select_outputs(self, output_filter: Sequence[str]) -> list[str]:
        """The aliases to return: `output_filter` checked as TF Serving checks it, or all outputs."""
        if not output_filter:
            return list(self.outputs)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {alias} "
                                       f"Outputs expected to be in the set {{{_keys(self.outputs)}}}.")
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)

    # --- execution ----------------------------------------------------------------------------

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the concrete function (blocking: call from a worker thread)."""
        try:
            result = self._function(**{alias: tf.constant(array) for alias, array in inputs.items()})
        except tf.errors.OpError as exc:
            raise ServingError(_GRPC_CODES.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message) from exc
        return {alias: _ndarray(tensor) for alias, tensor in result.items()}


def _ndarray(tensor: tf.Tensor) -> np.ndarray:
    """A result tensor as an array (a scalar string tensor's `.numpy()` is plain bytes)."""
    value = tensor.numpy()
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=object if tensor.dtype == tf.string else tensor.dtype.as_numpy_dtype)
