"""Smaller exports: the model's weights stored as float16 or int8, decoded back to float32 in the graph.

A SavedModel's size is almost all weights. A `WeightCodec` stores each large weight tensor in a
narrower type and the serving function turns it back into float32 before the unchanged float32
computation runs (Keras' `stateless_call` with the decoded tensors), so the model server needs no
special kernels, CPU or GPU, and the signatures stay exactly as docs/architecture.md says.

* `float16`: every weight cast to half precision; 2x smaller, scores within ~1e-3.
* `int8`: symmetric post-training weight quantization with one float32 scale per output channel
  (per input channel for depthwise kernels); ~4x smaller for conv/dense-heavy models. Small
  tensors (biases, batch-norm statistics) stay float32: they cost little and matter much.

(TF-TRT's FP16/INT8 conversion is the GPU alternative for the real `tensorflow/serving:*-gpu`
image; it needs TensorRT, which this CPU stack does not have.)
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

MIN_QUANTIZED_SIZE = 1024  # int8: tensors with fewer elements stay float32


@dataclass(frozen=True)
class WeightCodec:
    name: str
    summary: str


CODECS = {
    "float16": WeightCodec("float16", "weights stored as float16 (2x smaller)"),
    "int8": WeightCodec("int8", "weights quantized to int8 per output channel (about 4x smaller)"),
}


class _Stored(tf.Module):
    """One weight as saved: `value` (float32/float16/int8) and, for int8, a float32 `scale`."""

    def __init__(self, array: np.ndarray, codec: WeightCodec, path: str):
        super().__init__()
        self.scale = None
        if array.dtype != np.float32:  # e.g. a dropout layer's integer seed state
            self.value = tf.Variable(array, trainable=False)
        elif codec.name == "float16":
            self.value = tf.Variable(array.astype(np.float16), trainable=False)
        elif codec.name == "int8" and array.size >= MIN_QUANTIZED_SIZE:
            # depthwise kernels [h, w, channels, 1]: one scale per channel, not one for them all
            axes = (0, 1) if "depthwise" in path and array.ndim == 4 else tuple(range(array.ndim - 1))
            scale = np.max(np.abs(array), axis=axes, keepdims=True) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            self.value = tf.Variable(np.round(array / scale).astype(np.int8), trainable=False)
            self.scale = tf.Variable(scale, trainable=False)
        else:
            self.value = tf.Variable(array, trainable=False)

    def decode(self, dtype: tf.DType) -> tf.Tensor:
        value = tf.cast(self.value, tf.float32)
        if self.scale is not None:
            value = value * self.scale
        return tf.cast(value, dtype)


class Untracked:
    """Holds a Keras model out of TensorFlow's object tracking, so its variables are not saved through it."""

    def __init__(self, model: keras.Model):
        self.model = model


class CompressedWeights(tf.Module):
    """The weights of `model` under `codec`, and its forward pass computed from them.

    With `tap_layer`, `tapped` also returns that layer's output (for training.ood's score).
    """

    def __init__(self, model: keras.Model, codec: WeightCodec, tap_layer: str | None = None):
        super().__init__()
        if tap_layer is not None:  # the same layers and weights, one more output
            model = keras.Model(model.inputs[0], [model.get_layer(tap_layer).output, model.outputs[0]])
        self._tapping = tap_layer is not None
        self._held = Untracked(model)
        self.codec = codec.name
        self.trainable = [_Stored(v.numpy(), codec, v.path) for v in model.trainable_variables]
        self.non_trainable = [_Stored(v.numpy(), codec, v.path) for v in model.non_trainable_variables]
        self._dtypes = ([v.dtype for v in model.trainable_variables],
                        [v.dtype for v in model.non_trainable_variables])

    def tapped(self, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(the tap layer's output, class probabilities) for float32 pixels, from the decoded weights."""
        trainable = [s.decode(tf.as_dtype(d)) for s, d in zip(self.trainable, self._dtypes[0])]
        non_trainable = [s.decode(tf.as_dtype(d)) for s, d in zip(self.non_trainable, self._dtypes[1])]
        outputs, _ = self._held.model.stateless_call(trainable, non_trainable, pixels, training=False)
        return (outputs[0], outputs[1]) if self._tapping else (None, outputs)

    def __call__(self, pixels: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class probabilities for float32 pixels, from the decoded weights (never the originals)."""
        return self.tapped(pixels)[1]
