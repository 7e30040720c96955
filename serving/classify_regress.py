"""Classify, Regress and MultiInference: tf.Example inputs run through a SavedModel signature.

As TF Serving's classifier, regressor and multi-inference runners do it:
* the signature (`serving_default` when unnamed) must take one string input named `inputs`, the
  serialized tf.Examples, and give `classes` and/or `scores` ([batch, classes]) to classify, or
  `outputs` ([batch] or [batch, 1], float) to regress; a Predict signature such as an image model's
  is refused with INVALID_ARGUMENT, worded as TF Serving words it;
* with `--enable_signature_method_name_check`, the signature's method_name must also say so;
* `example_list_with_context` examples are the context followed by the example (so an example's
  own features win), serialized as TF Serving concatenates them.

This module checks signatures and converts messages; `ServingCore` runs the signatures.
Every problem raises `ServingError`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving.errors import invalid_argument, unimplemented
from serving.signatures import DEFAULT_SIGNATURE

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

INPUTS = "inputs"
CLASSES = "classes"
SCORES = "scores"
OUTPUTS = "outputs"


def _debug(signature_def: meta_graph_pb2.SignatureDef) -> str:
    return text_format.MessageToString(signature_def)


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(map(str, array.shape)) + "]"


def signature_def(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef], name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDef a Classify/Regress request names (the default one when it names none)."""
    resolved = name or DEFAULT_SIGNATURE
    if resolved not in signature_defs:
        raise invalid_argument(f"No signature was found with the name: {resolved}")
    return resolved, signature_defs[resolved]


def _check_method_and_input(signature: meta_graph_pb2.SignatureDef, method: str, what: str,
                            method_name_check: bool) -> None:
    if method_name_check and signature.method_name != method:
        raise invalid_argument(f"Expected {what} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")


def check_classification(signature: meta_graph_pb2.SignatureDef, method_name_check: bool) -> list[str]:
    """TF Serving's PreProcessClassification; returns the output aliases to fetch."""
    _check_method_and_input(signature, CLASSIFY_METHOD, "classification", method_name_check)
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if INPUTS not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {_debug(signature)}")
    outputs = [alias for alias in (CLASSES, SCORES) if alias in signature.outputs]
    if not outputs:
        raise invalid_argument(f'Expected classification signature outputs to contain at least one of "{CLASSES}" '
                               f'or "{SCORES}". Signature was: {_debug(signature)}')
    return outputs


def check_regression(signature: meta_graph_pb2.SignatureDef, method_name_check: bool) -> list[str]:
    """TF Serving's PreProcessRegression; returns the output aliases to fetch."""
    _check_method_and_input(signature, REGRESS_METHOD, "regression", method_name_check)
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if INPUTS not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_debug(signature)}")
    return [OUTPUTS]


def check_for_method(signature: meta_graph_pb2.SignatureDef, method_name: str, method_name_check: bool) -> list[str]:
    """A MultiInference task's checks, chosen by the task's method_name."""
    if method_name == CLASSIFY_METHOD:
        return check_classification(signature, method_name_check)
    if method_name == REGRESS_METHOD:
        return check_regression(signature, method_name_check)
    raise unimplemented(f"Unsupported signature method_name: {method_name}")


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's tf.Examples as the string tensor a Classify/Regress signature takes."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + example.SerializeToString() for example in with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


def classification_result(outputs: Mapping[str, np.ndarray], num_examples: int,
                          result: classification_pb2.ClassificationResult) -> None:
    """TF Serving's PostProcessClassificationResult: checks the outputs, fills `result`."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for alias, array, dtype, dtype_name in ((CLASSES, classes, object, "DT_STRING"),
                                            (SCORES, scores, np.float32, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}")
        if array.dtype != dtype:
            raise invalid_argument(f"Expected {alias} Tensor of {dtype_name}. Got: "
                                   f"{types_pb2.DataType.Name(_dtype_enum(array))}")
        if array.shape[0] != num_examples:
            raise invalid_argument(f"Expected {alias} output batch size of {num_examples}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} "
                               f"vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    for row in range(num_examples):
        classifications = result.classifications.add()
        for column in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])


def regression_result(outputs: Mapping[str, np.ndarray], num_examples: int,
                      result: regression_pb2.RegressionResult) -> None:
    """TF Serving's PostProcessRegressionResult: checks the output, fills `result`."""
    output = outputs[OUTPUTS]
    if not (output.ndim == 1 or output.ndim == 2 and output.shape[1] == 1):
        raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                               f"but got {_shape(output)}")
    if output.shape[0] != num_examples:
        raise invalid_argument(f"Input batch size did not match output batch size: {num_examples} "
                               f"vs. {output.shape[0]}")
    if output.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                               f"{types_pb2.DataType.Name(_dtype_enum(output))}")
    for value in output.reshape(-1):
        result.regressions.add().value = float(value)


def _dtype_enum(array: np.ndarray) -> int:
    if array.dtype == object:
        return types_pb2.DT_STRING
    try:
        return tf.as_dtype(array.dtype).as_datatype_enum
    except TypeError:
        return types_pb2.DT_INVALID
