"""JSON <-> tensors for the REST API, following TF Serving's `json_tensor` and its error messages.

Predict requests: `{"signature_name": ..., "instances": [...]}` (row format: one entry per batch
row, an object per row when the signature has several inputs) or `{"inputs": ...}` (columnar: a
value, or an object of named values). Values must have the signature's dtype as JSON types go
(integers within range for integer tensors, numbers for floats, `true`/`false` for bool, strings or
`{"b64": "..."}` for strings); nothing is silently converted. Responses mirror the request format:
`{"predictions": [...]}` or `{"outputs": ...}`; outputs whose name ends in `_bytes` are written as
`{"b64": ...}`, other strings as UTF-8 text, floats with the shortest decimal that round-trips their
float32 value.

Classify/Regress requests: `{"signature_name", "context", "examples": [...]}` with one JSON object
per tf.Example (feature values: numbers, strings, `{"b64"}`, booleans, or lists of one of those);
responses `{"results": ...}`.

A valid request is converted with numpy in one pass; anything irregular is walked value by value
in document order, as TF Serving walks it, so the first problem is reported with TF Serving's
message. Every problem raises `ServingError` (INVALID_ARGUMENT, or UNIMPLEMENTED for dtypes the
JSON API cannot carry, as in TF Serving).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from typing import Any, Mapping

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving import tensors
from serving.errors import ServingError, invalid_argument, unimplemented
from serving.json_document import JsonSyntaxError, debug_string, parse, utf8
from serving.signatures import Signature

_B64 = "b64"
_BYTES_SUFFIX = "_bytes"
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)
# dtype -> (JSON types a value may have, smallest and largest integer); rapidjson's Is*() checks.
_VALUE_RULES: dict[int, tuple[frozenset, tuple[int, int] | None]] = {
    types_pb2.DT_FLOAT: (frozenset({int, float}), None),
    types_pb2.DT_DOUBLE: (frozenset({int, float}), None),
    types_pb2.DT_INT32: (frozenset({int}), _INT32),
    types_pb2.DT_INT16: (frozenset({int}), _INT32),
    types_pb2.DT_INT8: (frozenset({int}), _INT32),
    types_pb2.DT_UINT8: (frozenset({int}), _INT32),
    types_pb2.DT_INT64: (frozenset({int}), _INT64),
    types_pb2.DT_UINT32: (frozenset({int}), (0, 2**32 - 1)),
    types_pb2.DT_UINT64: (frozenset({int}), (0, 2**64 - 1)),
    types_pb2.DT_BOOL: (frozenset({bool}), None),
    types_pb2.DT_STRING: (frozenset({str, dict}), None),
}


class Format(enum.Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def parse_body(body: bytes) -> dict:
    """The request document: a JSON object, or INVALID_ARGUMENT worded as TF Serving's parser."""
    try:
        doc = parse(body)
    except JsonSyntaxError as exc:
        raise invalid_argument(str(exc)) from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    value = doc.get("signature_name", "")
    if not isinstance(value, str):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} not formatted correctly. "
                               f"'signature_name' key must be a string value.")
    return value


def decode_inputs(doc: dict, signature: Signature, requested_name: str) -> tuple[dict[str, np.ndarray], Format]:
    """The request's input arrays, typed by `signature`, and the format to answer in."""
    if not signature.inputs:
        raise invalid_argument(f"Failed to get input map for signature: {requested_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
                               f"'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _decode_rows(instances, signature), Format.ROW
    if has_inputs:
        return _decode_columns(doc["inputs"], signature), Format.COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _dense_shape(value: Any) -> tuple[int, ...]:
    """The shape of nested lists, read from the first element at each level (TF's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


# --- predict: the fast path -------------------------------------------------------------------

class _Irregular(Exception):
    """The fast path cannot convert this value; the faithful walk will (or will say why not)."""


def _fast_array(value: Any, shape: tuple[int, ...], kind: tensors.DType) -> np.ndarray:
    """`value` converted with numpy when it is dense and every value is valid; else _Irregular."""
    rule = _VALUE_RULES.get(kind.enum)
    if rule is None or kind.is_string:
        raise _Irregular()
    allowed, bounds = rule
    try:
        objects = np.array(value, dtype=object)
    except (ValueError, TypeError):
        raise _Irregular() from None
    if objects.shape != shape or not set(map(type, objects.flat)) <= allowed:
        raise _Irregular()
    try:
        if bounds is None:
            with np.errstate(over="ignore"):  # beyond float32: infinity, as TF Serving converts it
                return objects.astype(kind.numpy)
        wide = objects.astype(np.uint64 if kind.enum == types_pb2.DT_UINT64 else np.int64)
    except (OverflowError, ValueError, TypeError):
        raise _Irregular() from None
    if wide.size and (wide.min() < bounds[0] or wide.max() > bounds[1]):
        raise _Irregular()
    return wide.astype(kind.numpy)


def _decode_rows(instances: list, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    try:
        if not _is_named(instances[0]):
            name = names[0]
            kind = tensors.dtype(signature.inputs[name].dtype)
            return {name: _fast_array(instances, _dense_shape(instances), kind)}
        expected = set(names)
        if not all(_is_named(row) and row.keys() == expected for row in instances):
            raise _Irregular()
        arrays = {}
        for name in names:
            column = [row[name] for row in instances]
            arrays[name] = _fast_array(column, _dense_shape(column), tensors.dtype(signature.inputs[name].dtype))
        return arrays
    except _Irregular:
        return _RowWalk(signature).decode(instances)


def _decode_columns(value: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not _is_named(value):
        if len(names) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        return {names[0]: _tensor(value, signature.inputs[names[0]].dtype)}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _tensor(value[name], signature.inputs[name].dtype)
    return arrays


def _tensor(value: Any, dtype_enum: int) -> np.ndarray:
    kind = _kind(dtype_enum)
    shape = _dense_shape(value)
    try:
        return _fast_array(value, shape, kind)
    except _Irregular:
        return _to_array(_walk(value, shape, kind), shape, kind)


def _kind(dtype_enum: int) -> tensors.DType:
    try:
        return tensors.dtype(dtype_enum)
    except ValueError:  # a dtype no request can carry: the walk reports it for the first value
        return tensors.DType(dtype_enum, tensors.dtype_name(dtype_enum), np.dtype(object), "")


# --- predict: the faithful walk ---------------------------------------------------------------

class _RowWalk:
    """TF Serving's FillTensorMapFromInstancesList: each row converted and checked on its own."""

    def __init__(self, signature: Signature):
        self._inputs = signature.inputs
        self._values: dict[str, list] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def decode(self, instances: list) -> dict[str, np.ndarray]:
        names = sorted(self._inputs)
        named = _is_named(instances[0])
        for index, element in enumerate(instances):
            if named:
                if not _is_named(element):
                    raise invalid_argument(f"Expecting object but got list at item {index} of input list")
                for key, item in element.items():
                    self._add(key, item, f"Failed to process element: {index} key: {key} of 'instances' list")
                if set(element) != set(names):
                    raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                           f"{debug_string(element)} keys must be equal to: {','.join(names)}")
            else:
                if _is_named(element):
                    raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
                self._add(names[0], element, f"Failed to process element: {index} of 'instances' list")
        count = len(instances)
        return {name: _to_array(values, (count, *self._shapes[name]), _kind(self._inputs[name].dtype))
                for name, values in self._values.items()}

    def _add(self, name: str, item: Any, context: str) -> None:
        try:
            if name not in self._inputs:
                raise invalid_argument(f"JSON object: does not have named input: {name}")
            kind = _kind(self._inputs[name].dtype)
            shape = _dense_shape(item)
            values = _walk(item, shape, kind)
            if name not in self._values:
                self._values[name], self._shapes[name] = values, shape
                return
            first_size = math.prod(self._shapes[name])
            if len(values) != first_size:
                raise invalid_argument(f"Expecting tensor size: {first_size} but got: {len(values)}")
            if shape != self._shapes[name]:
                raise invalid_argument(f"Expecting shape {_shape_text(self._shapes[name])} but got: "
                                       f"{_shape_text(shape)}")
            self._values[name].extend(values)
        except ServingError as exc:
            raise invalid_argument(f"{context}. Error: {exc}") from None


def _walk(value: Any, shape: tuple[int, ...], kind: tensors.DType) -> list:
    """TF Serving's FillTensorProto: the values of `value` in document order, each checked."""
    rank = len(shape)
    values = []
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, list):
            if level >= rank:
                raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
            if len(item) != shape[level]:
                raise invalid_argument(f"Encountered list at unexpected size: {len(item)} at level: {level} "
                                       f"expected size: {shape[level]}")
            pending.extend((element, level + 1) for element in reversed(item))
            continue
        if level != rank:
            raise invalid_argument(f"JSON Value: {debug_string(item)} found at incorrect level: {level + 1} "
                                   f"in the JSON DOM. Expected at level: {rank}")
        if isinstance(item, dict):
            if not kind.is_string:
                raise _type_error(item, kind)
            values.append(_b64_decode(item))
        else:
            values.append(_value(item, kind))
    return values


def _value(item: Any, kind: tensors.DType) -> Any:
    """One JSON value as a value of `kind` (TF Serving's AddValueToTensor)."""
    rule = _VALUE_RULES.get(kind.enum)
    if rule is None:
        raise unimplemented(f"Conversion of JSON Value: {debug_string(item)} to type: {kind.name}")
    allowed, bounds = rule
    if kind.is_string:
        if not isinstance(item, str):
            raise _type_error(item, kind)
        return utf8(item)
    if type(item) not in allowed:
        raise _type_error(item, kind)
    if bounds is not None and not bounds[0] <= item <= bounds[1]:
        raise _type_error(item, kind)
    if kind.numpy.kind == "f":
        try:
            return float(item)
        except OverflowError:
            raise invalid_argument("JSON Parse error: Number too big to be stored in double.") from None
    return item


def _to_array(values: list, shape: tuple[int, ...], kind: tensors.DType) -> np.ndarray:
    if len(shape) > 64:
        raise invalid_argument(f"a tensor of rank {len(shape)}: python -m serving takes at most 64 dimensions")
    if kind.is_string:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif kind.numpy.kind in "iu":
        array = np.array(values, dtype=np.uint64 if kind.enum == types_pb2.DT_UINT64 else np.int64).astype(kind.numpy)
    else:
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=kind.numpy)
    return array.reshape(shape)


def _type_error(item: Any, kind: tensors.DType) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_string(item)} Type: {_json_type(item)} is not of expected type: "
                            f"{kind.name}")


_BASE64_WHITESPACE = re.compile(r"[ \t\n\v\f\r]")
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*")


def _b64_decode(value: Any) -> bytes:
    """`{"b64": "..."}` decoded as absl::Base64Unescape does: whitespace skipped, padding optional."""
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = _BASE64_WHITESPACE.sub("", value[_B64])
    data = text.rstrip("=.")
    padding = len(text) - len(data)
    if (not _BASE64_BODY.fullmatch(data) or len(data) % 4 == 1
            or padding and (len(data) + padding) % 4 != 0):
        raise invalid_argument("Unable to base64 decode")
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


# --- classify / regress: tf.Examples ---------------------------------------------------------

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def fill_examples(doc: dict, request_input: input_pb2.Input) -> None:
    """`context` and `examples` of a Classify/Regress body into `request_input` (TF Serving's messages)."""
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], request_input.example_list_with_context.context)
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is "
                               f"expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    target = (request_input.example_list_with_context.examples if has_context
              else request_input.example_list.examples)
    for value in examples:
        _example(value, target.add())


def _example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_feature_value(item: Any, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value appended to a feature, as TF Serving's AddValueToFeature types it."""
    def values(kind: str):
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                   f"{_FEATURE_KIND_NAMES[current]}")
        return getattr(feature, kind).value

    if item is None or isinstance(item, list) or isinstance(item, dict) and not _is_b64(item):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")
    if isinstance(item, bool):
        values("int64_list").append(1 if item else 0)
    elif isinstance(item, dict):
        values("bytes_list").append(_b64_decode(item))
    elif isinstance(item, str):
        values("bytes_list").append(utf8(item))
    elif isinstance(item, float) or not _INT64[0] <= item <= 2**64 - 1:  # rapidjson keeps these as doubles
        try:
            values("float_list").append(float(item))
        except OverflowError:
            raise invalid_argument("JSON Parse error: Number too big to be stored in double.") from None
    else:
        int64_values = values("int64_list")
        if item > _INT64[1]:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        int64_values.append(item)


def encode_classification(result: classification_pb2.ClassificationResult) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`, one list per example."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    body = {"results": [[[entry.label, _float_value(np.float32(entry.score))] for entry in item.classes]
                        for item in result.classifications]}
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


def encode_regression(result: regression_pb2.RegressionResult) -> bytes:
    """`{"results": [value, ...]}`, one value per example."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    body = {"results": [_float_value(np.float32(item.value)) for item in result.regressions]}
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


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
