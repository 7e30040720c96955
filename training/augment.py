"""Training-time distortions, applied to whole batches in the input pipeline.

They live in the `tf.data` pipeline, never in the model, so the exported serving graph holds none
of them. Which distortions make sense depends on the data, so every data source names its policy:
clothing and everyday photos look natural mirrored left to right, but not upside down or turned
(a shoe on its toe is not a shoe any more), so the policies use horizontal flips and small shifts
only.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    """Random horizontal flip, then a random shift of up to `max_shift` of the image size.

    `fill` is how the uncovered border is filled: "CONSTANT" (zeros: right for Fashion-MNIST's
    black background) or "REFLECT" (photos, whose borders are not uniform).
    """

    flip_horizontal: bool = True
    max_shift: float = 0.08
    fill: str = "CONSTANT"

    def __call__(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Distort a batch `[B, H, W, C]` (any dtype); each image gets its own random draw."""
        if self.flip_horizontal:
            flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
            images = tf.where(flip, tf.reverse(images, axis=[2]), images)
        height, width = images.shape[1], images.shape[2]
        pad = int(round(self.max_shift * min(height, width)))
        if pad > 0:
            images = _random_shift(images, pad, self.fill)
        return images, labels


def _random_shift(images: tf.Tensor, pad: int, fill: str) -> tf.Tensor:
    """Pad by `pad` pixels on every side, then cut each image back out at a random offset."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=fill)
    offsets = tf.random.uniform([batch, 2], 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)
