"""Turning images into a model's input tensor: the one implementation, used twice.

The folder data set decodes its training files with `decode_to_input`, and the exported
`image_bytes` signature decodes client uploads with the very same function, so what the model saw
in training and what it sees in serving cannot drift apart. Everything here stays in the uint8
pixel domain; scaling to floats belongs to the model (see backbones).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class InputSpec:
    """The pixel tensor a model takes: height, width and channels (1 grey or 3 RGB), uint8."""

    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


# ITU-R 601-2 luma, the weights Pillow's convert("L") uses, so a grey model sees the same
# brightness whether the gateway (Pillow) or the graph converted a colour image.
_LUMA = (0.299, 0.587, 0.114)


def _to_grey(rgb: tf.Tensor) -> tf.Tensor:
    luma = tf.tensordot(tf.cast(rgb, tf.float32), tf.constant(_LUMA), axes=[[-1], [0]])
    return tf.cast(tf.clip_by_value(tf.round(luma), 0.0, 255.0), tf.uint8)[..., tf.newaxis]


def fit_to_input(image: tf.Tensor, spec: InputSpec) -> tf.Tensor:
    """Convert one uint8 `[h, w, c]` image (c = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) to `spec`.

    Alpha is dropped; grey becomes RGB by repetition and RGB becomes grey by luma. Resizing is
    bilinear with antialiasing (large photos shrink smoothly), rounded back to uint8. An image
    already in the target shape passes through bit for bit.
    """
    image = tf.convert_to_tensor(image, dtype=tf.uint8)
    grey_source = tf.shape(image)[-1] < 3
    if spec.channels == 1:
        image = tf.cond(grey_source, lambda: image[..., :1], lambda: _to_grey(image[..., :3]))
    else:
        image = tf.cond(grey_source, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    image = tf.ensure_shape(image, [None, None, spec.channels])

    def resize() -> tf.Tensor:
        resized = tf.image.resize(image, (spec.height, spec.width), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    size = tf.shape(image)[:2]
    same_size = tf.logical_and(size[0] == spec.height, size[1] == spec.width)
    image = tf.cond(same_size, lambda: image, resize)
    return tf.ensure_shape(image, spec.shape)


def decode_to_input(encoded: tf.Tensor, spec: InputSpec) -> tf.Tensor:
    """Decode one encoded image (JPEG, PNG, GIF, BMP) and fit it to `spec` (uint8 `[H, W, C]`).

    JPEGs use the accurate integer DCT, as libjpeg and Pillow (hence the gateway) do by default:
    TensorFlow's own default, INTEGER_FAST, is off by up to 8 levels on most pixels, which showed
    as a score skew between the gateway and the trained model on the same JPEG file.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=0, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False))
    return fit_to_input(image, spec)
