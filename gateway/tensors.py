"""TensorProto encode/decode for the few types the gateway exchanges, without numpy or TensorFlow.

* uint8 images go out as `tensor_content` (raw bytes, row-major), never as int lists: one copy,
  no per-pixel varints.
* float32 scores come back either as `tensor_content` (little-endian, what TF Serving sends) or as
  `float_val` (what hand-built protos often use; one value means "fill").
* labels come back as `string_val`.
"""

from __future__ import annotations

import array
import sys
from typing import Sequence

from gateway.wire import tensor as tensor_pb2

DT_FLOAT = tensor_pb2.DT_FLOAT
DT_DOUBLE = tensor_pb2.DT_DOUBLE
DT_UINT8 = tensor_pb2.DT_UINT8
DT_STRING = tensor_pb2.DT_STRING


class TensorError(ValueError):
    """A tensor from the model server does not have the type or shape the gateway expects."""


def shape_of(tensor: tensor_pb2.TensorProto) -> tuple[int, ...]:
    return tuple(dim.size for dim in tensor.tensor_shape.dim)


def _set_shape(tensor: tensor_pb2.TensorProto, shape: Sequence[int]) -> None:
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)


def _count(shape: Sequence[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def uint8_tensor(content: bytes, shape: Sequence[int]) -> tensor_pb2.TensorProto:
    """A DT_UINT8 tensor holding `content` (row-major) with `shape`."""
    if len(content) != _count(shape):
        raise TensorError(f"{len(content)} bytes do not fill shape {list(shape)}")
    tensor = tensor_pb2.TensorProto(dtype=DT_UINT8, tensor_content=content)
    _set_shape(tensor, shape)
    return tensor


def string_tensor(values: Sequence[bytes], shape: Sequence[int] | None = None) -> tensor_pb2.TensorProto:
    """A DT_STRING tensor (shape [len(values)] unless given)."""
    tensor = tensor_pb2.TensorProto(dtype=DT_STRING, string_val=list(values))
    _set_shape(tensor, [len(values)] if shape is None else shape)
    return tensor


def float_values(tensor: tensor_pb2.TensorProto) -> list[float]:
    """The flat values of a DT_FLOAT (or DT_DOUBLE) tensor, from tensor_content or the typed field."""
    n = _count(shape_of(tensor))
    if tensor.dtype == DT_FLOAT:
        code, typed = "f", tensor.float_val
    elif tensor.dtype == DT_DOUBLE:
        code, typed = "d", tensor.double_val
    else:
        raise TensorError(f"expected a float tensor, got dtype {tensor_pb2.DataType.Name(tensor.dtype)}")
    if tensor.tensor_content:
        values = array.array(code)
        values.frombytes(tensor.tensor_content)
        if sys.byteorder != "little":  # the wire format is little-endian
            values.byteswap()
        out = values.tolist()
    elif len(typed) == 1 and n > 1:
        out = [typed[0]] * n
    else:
        out = list(typed)
    if len(out) != n:
        raise TensorError(f"float tensor holds {len(out)} values for shape {list(shape_of(tensor))}")
    return out


def string_values(tensor: tensor_pb2.TensorProto) -> list[bytes]:
    """The flat values of a DT_STRING tensor."""
    if tensor.dtype != DT_STRING:
        raise TensorError(f"expected a string tensor, got dtype {tensor_pb2.DataType.Name(tensor.dtype)}")
    n = _count(shape_of(tensor))
    out = list(tensor.string_val)
    if len(out) == 1 and n > 1:
        out = out * n
    if len(out) != n:
        raise TensorError(f"string tensor holds {len(out)} values for shape {list(shape_of(tensor))}")
    return out


def rows(values: list, shape: tuple[int, ...]) -> list[list]:
    """Split the flat values of a [batch, width] tensor into `batch` rows."""
    if len(shape) != 2:
        raise TensorError(f"expected a [batch, classes] tensor, got shape {list(shape)}")
    batch, width = shape
    return [values[i * width:(i + 1) * width] for i in range(batch)]
