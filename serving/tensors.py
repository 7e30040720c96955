"""TensorProto <-> numpy conversions, and the dtype table they share with the REST converters.

Decoding follows TensorFlow's `Tensor::FromProto`: `tensor_content` or the typed `*_val` field,
fewer typed values than elements repeat the last one. Encoding follows TF Serving's Predict:
typed `*_val` fields by default (`Tensor::AsProtoField`), `tensor_content` when the server runs
with `--enable_serialization_as_tensor_content`; strings always go in `string_val`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2


@dataclass(frozen=True)
class DType:
    """One TensorFlow dtype: its enum, the name TF prints (`DataTypeString`), numpy type, value field."""

    enum: int
    name: str
    numpy: np.dtype
    field: str

    @property
    def is_string(self) -> bool:
        return self.enum == types_pb2.DT_STRING


_TABLE = [
    DType(types_pb2.DT_FLOAT, "float", np.dtype(np.float32), "float_val"),
    DType(types_pb2.DT_DOUBLE, "double", np.dtype(np.float64), "double_val"),
    DType(types_pb2.DT_HALF, "half", np.dtype(np.float16), "half_val"),
    DType(types_pb2.DT_INT8, "int8", np.dtype(np.int8), "int_val"),
    DType(types_pb2.DT_INT16, "int16", np.dtype(np.int16), "int_val"),
    DType(types_pb2.DT_INT32, "int32", np.dtype(np.int32), "int_val"),
    DType(types_pb2.DT_INT64, "int64", np.dtype(np.int64), "int64_val"),
    DType(types_pb2.DT_UINT8, "uint8", np.dtype(np.uint8), "int_val"),
    DType(types_pb2.DT_UINT16, "uint16", np.dtype(np.uint16), "int_val"),
    DType(types_pb2.DT_UINT32, "uint32", np.dtype(np.uint32), "uint32_val"),
    DType(types_pb2.DT_UINT64, "uint64", np.dtype(np.uint64), "uint64_val"),
    DType(types_pb2.DT_BOOL, "bool", np.dtype(np.bool_), "bool_val"),
    DType(types_pb2.DT_STRING, "string", np.dtype(object), "string_val"),
]
_BY_ENUM = {d.enum: d for d in _TABLE}


def dtype(enum: int) -> DType:
    """The DType for a `types_pb2` enum; ValueError for dtypes a Predict request cannot carry."""
    try:
        return _BY_ENUM[enum]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype_name(enum)}") from None


def dtype_name(enum: int) -> str:
    """TensorFlow's name for a dtype enum (`float`, `uint8`…), as its error messages print it."""
    known = _BY_ENUM.get(enum)
    if known:
        return known.name
    return types_pb2.DataType.Name(enum).removeprefix("DT_").lower() if enum in types_pb2.DataType.values() else str(enum)


def dtype_name_of_numpy(numpy_dtype: np.dtype) -> str:
    """TensorFlow's name for the dtype of a decoded array (object arrays hold strings)."""
    for kind in _TABLE:
        if kind.numpy == numpy_dtype:
            return kind.name
    return str(numpy_dtype)


def shape_text(shape: Iterable[int | None]) -> str:
    """`[-1,28,28,1]`: shapes as TF Serving prints them, unknown dimensions as -1."""
    return "[" + ",".join(str(-1 if d is None else d) for d in shape) + "]"


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto; ValueError when its values do not fill its shape."""
    kind = dtype(proto.dtype)
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ValueError(f"negative dimension in shape {shape_text(shape)}")
    count = math.prod(shape)
    if proto.tensor_content:
        if kind.is_string:
            raise ValueError("string tensors cannot use tensor_content")
        flat = np.frombuffer(proto.tensor_content, dtype=kind.numpy)
        if flat.size != count:
            raise ValueError(f"tensor_content holds {flat.size} values, shape {shape_text(shape)} needs {count}")
        return flat.reshape(shape)
    values = getattr(proto, kind.field)
    if kind.enum == types_pb2.DT_HALF:
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    elif kind.is_string:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = np.array(values, dtype=kind.numpy)
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size > count:
        raise ValueError(f"{flat.size} values given, shape {shape_text(shape)} holds {count}")
    filler = flat[-1] if flat.size else (b"" if kind.is_string else kind.numpy.type(0))
    padded = np.empty(count, dtype=kind.numpy)
    padded[: flat.size] = flat
    padded[flat.size:] = filler
    return padded.reshape(shape)


def to_proto(array: np.ndarray, enum: int, *, as_content: bool, out: tensor_pb2.TensorProto) -> None:
    """Encode `array` as dtype `enum` into `out` (typed fields unless `as_content`)."""
    kind = dtype(enum)
    out.dtype = enum
    for size in array.shape:
        out.tensor_shape.dim.add().size = size
    if kind.is_string:
        out.string_val.extend(array.ravel().tolist())
    elif as_content:
        out.tensor_content = np.ascontiguousarray(array, dtype=kind.numpy).tobytes()
    elif kind.enum == types_pb2.DT_HALF:
        out.half_val.extend(array.astype(np.float16).view(np.uint16).ravel().tolist())
    else:
        getattr(out, kind.field).extend(array.astype(kind.numpy, copy=False).ravel().tolist())
