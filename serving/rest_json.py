"""JSON <-> arrays for the REST predict API, with TF Serving's formats and error messages.

Requests: `{"signature_name": ..., "instances": [...]}` (row format: one entry per batch row, an
object per row when the signature has several inputs) or `{"inputs": ...}` (columnar: a value,
or an object of named values). Values are coerced to the signature's dtypes; strings may be
`{"b64": "..."}`. Responses mirror the request format: `{"predictions": [...]}` or
`{"outputs": ...}`; outputs whose name ends in `_bytes` are written as `{"b64": ...}`, other
strings as UTF-8 text, floats with the shortest decimal that round-trips their float32 value.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from typing import Any, Mapping

import numpy as np

from serving import tensors
from serving.errors import invalid_argument
from serving.signatures import Signature, TensorSpec

_B64 = "b64"
_BYTES_SUFFIX = "_bytes"
_SHOWN = 200  # characters of a JSON value quoted in an error message


class Format(enum.Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def parse_body(body: bytes) -> dict:
    """The request document: a JSON object, or INVALID_ARGUMENT worded as TF Serving's parser."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from exc
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_show(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    value = doc.get("signature_name", "")
    if not isinstance(value, str):
        raise invalid_argument(f"JSON Value: {_show(doc)} not formatted correctly. "
                               f"'signature_name' key must be a string value.")
    return value


def decode_inputs(doc: dict, signature: Signature) -> tuple[dict[str, np.ndarray], Format]:
    """The request's input arrays, typed by `signature`, and the format to answer in."""
    if not signature.inputs:
        raise invalid_argument(f"Failed to get input map for signature: {signature.name}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {_show(doc)} Not formatted correctly expecting only one of "
                               f"'inputs' or 'instances' keys to exist ")
    if has_instances:
        return _decode_rows(doc, signature), Format.ROW
    if has_inputs:
        return _decode_columns(doc["inputs"], signature), Format.COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _decode_rows(doc: dict, signature: Signature) -> dict[str, np.ndarray]:
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise invalid_argument(f"JSON Value: {_show(doc)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument(f"JSON Value: {_show(doc)} No values in 'instances' array")
    names = sorted(signature.inputs)
    named = _is_named(instances[0])
    if not named and len(names) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    columns: dict[str, list] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if named:
            if not _is_named(row):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            if set(row) != set(names):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{_show(row)} keys must be equal to: {','.join(names)}")
            for name in names:
                columns[name].append(row[name])
        else:
            if _is_named(row):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            columns[names[0]].append(row)
    return {name: to_array(values, signature.inputs[name], name) for name, values in columns.items()}


def _decode_columns(value: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not _is_named(value):
        if len(names) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        return {names[0]: to_array(value, signature.inputs[names[0]], names[0])}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], signature.inputs[name], name)
    return arrays


def to_array(value: Any, spec: TensorSpec, name: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of the spec's dtype."""
    kind = tensors.dtype(spec.dtype)
    shape = _dense_shape(value, name)
    if kind.is_string:
        flat = [_to_bytes(leaf, kind.name) for leaf in _leaves(value)]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    array = np.array(value)
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[kind.numpy.kind]
    if array.dtype.kind not in allowed:
        bad = next((leaf for leaf in _leaves(value) if np.array(leaf).dtype.kind not in allowed), value)
        raise invalid_argument(f"JSON Value: {_show(bad)} Type: {_json_type(bad)} is not of expected type: "
                               f"{kind.name}")
    return array.astype(kind.numpy)


def _dense_shape(value: Any, name: str) -> tuple[int, ...]:
    """The shape of nested lists (from the first element at each level), checked to be dense."""
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    _check_dense(value, shape, 0, name)
    return tuple(shape)


def _check_dense(value: Any, shape: list[int], level: int, name: str) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(f"JSON Value: {_show(value)} found at incorrect level: {level + 1} in the JSON "
                                   f"DOM of input {name}. Expected at level: {len(shape)}")
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)} "
                               f"(input {name})")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                               f"expected size: {shape[level]} (input {name})")
    for item in value:
        _check_dense(item, shape, level + 1, name)


def _leaves(value: Any):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _to_bytes(leaf: Any, dtype_name: str) -> bytes:
    if isinstance(leaf, str):
        return leaf.encode("utf-8")
    if _is_b64(leaf):
        try:
            return base64.b64decode(leaf[_B64], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_argument("Unable to base64 decode") from exc
    if isinstance(leaf, dict):
        raise invalid_argument(f"JSON Value: {_show(leaf)} not formatted correctly for base64 data")
    raise invalid_argument(f"JSON Value: {_show(leaf)} Type: {_json_type(leaf)} is not of expected type: "
                           f"{dtype_name}")


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _show(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


# --- responses -------------------------------------------------------------------------------

def encode_outputs(outputs: Mapping[str, np.ndarray], fmt: Format) -> bytes:
    """The response body for `outputs` in the request's format."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if fmt is Format.COLUMNAR:
        values = {name: _json_value(name, array) for name, array in outputs.items()}
        body: dict = {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    else:
        batch = None
        for name, array in outputs.items():
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and array.shape[0] != batch:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                                       f"expecting: {batch}")
            batch = array.shape[0]
        columns = {name: _json_value(name, array) for name, array in outputs.items()}
        if len(columns) == 1:
            body = {"predictions": next(iter(columns.values()))}
        else:
            body = {"predictions": [{name: column[row] for name, column in columns.items()}
                                    for row in range(batch or 0)]}
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


def _json_value(name: str, array: np.ndarray) -> Any:
    """An array as nested lists of JSON-ready Python values."""
    if array.dtype == object:
        as_b64 = name.endswith(_BYTES_SUFFIX)
        flat = [_string_value(item, as_b64) for item in array.ravel()]
    elif array.dtype.kind == "f":
        flat = [_float_value(item) for item in array.astype(np.float64 if array.dtype == np.float64 else np.float32)
                .ravel()]
    else:
        return array.tolist()
    if array.ndim == 0:
        return flat[0]
    nested = np.empty(len(flat), dtype=object)
    nested[:] = flat
    return nested.reshape(array.shape).tolist()


def _float_value(item: np.floating) -> float:
    # str() of a numpy float is its shortest round-trip decimal; float() keeps that value exact
    # for the JSON writer (0.1f is written 0.1, not 0.10000000149011612), as TF Serving writes it.
    return float(str(item)) if math.isfinite(item) else float(item)


def _string_value(item: bytes, as_b64: bool) -> Any:
    if not as_b64:
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: written as base64 like a *_bytes output (TF Serving would emit invalid JSON)
    return {_B64: base64.b64encode(item).decode("ascii")}
