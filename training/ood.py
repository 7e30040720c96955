"""The out-of-distribution (OOD) score: how unlike the training images an input is, in the graph.

Method: a Mahalanobis distance on feature statistics the model already computes. One layer of
the model (the backbone's `ood_layer`) is summarised per image: a feature map (small_cnn's second
conv block) as the mean and the standard deviation of each channel over the image, a vector (a
transfer backbone's pooled base output) as it is; a single Gaussian is fitted to those
summaries of the training images, and the score of an image is its squared Mahalanobis distance
from that Gaussian divided by the number of dimensions kept (about 1 for a typical training
image). Above `MAX_DIMS` dimensions only the top principal components are kept, so the exported
detector stays small. Why this method and not the softmax-based ones (max-logit, energy) or a
distance on the penultimate features: see docs/training/README.md, which has the measurements.

The threshold is calibrated when the model is exported, on held-out in-distribution images (the
validation split): the `COVERAGE` quantile of their scores, so that share of in-distribution
images passes. The exported signatures then return, beside `scores` and `classes`:

* `ood_score` float32 `[batch]`: higher = more unlike the training data;
* `ood_threshold` float32 `[batch]`: the calibrated threshold, the same value in every row, so a
  version carries its own calibration. An image is out of distribution when score > threshold.

`OodDetector` is what gets saved (a `tf.Module` of two variables and the threshold); `fit` builds
one from a trained model and its data splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

COVERAGE = 0.975  # share of held-out in-distribution images under the threshold
MAX_DIMS = 256  # principal components kept at most (the small_cnn layer has 128 dimensions)
FIT_MAX = 20_000  # training images the Gaussian is fitted on, at most
RIDGE = 1e-3  # added to every variance, as a share of the mean variance (a flat direction stays finite)
BATCH = 512
SCORE, THRESHOLD = "ood_score", "ood_threshold"  # the output names


def summarise(activations: tf.Tensor) -> tf.Tensor:
    """Per-image features of one layer's output: channel means and standard deviations for a
    feature map `[batch, h, w, c]` (-> `[batch, 2c]`), the vector itself for `[batch, d]`."""
    activations = tf.cast(activations, tf.float32)
    if activations.shape.rank == 4:
        mean, variance = tf.nn.moments(activations, axes=[1, 2])
        return tf.concat([mean, tf.sqrt(tf.maximum(variance, 0.0))], axis=1)
    return tf.reshape(activations, [tf.shape(activations)[0], -1])


def tap_model(model: keras.Model, layer: str) -> keras.Model:
    """The model with two outputs: the output of `layer` and the class probabilities (same weights)."""
    return keras.Model(model.inputs[0], [model.get_layer(layer).output, model.outputs[0]])


class OodDetector(tf.Module):
    """The fitted Gaussian as a whitening (`mean`, `projection`) and the calibrated threshold."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray, threshold: float, layer: str):
        super().__init__()
        self.mean = tf.Variable(np.asarray(mean, np.float32), trainable=False, name="ood_mean")
        self.projection = tf.Variable(np.asarray(projection, np.float32), trainable=False, name="ood_projection")
        self.threshold = tf.Variable(np.float32(threshold), trainable=False, name="ood_threshold")
        self.layer = layer

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Scores of layer summaries (from `tapped_pass`), in numpy."""
        return score_features(features, self.mean.numpy(), self.projection.numpy())

    def score(self, activations: tf.Tensor) -> tf.Tensor:
        """`[batch]` OOD scores of the tapped layer's output."""
        z = tf.matmul(summarise(activations) - self.mean, self.projection)
        return tf.reduce_mean(tf.square(z), axis=1)

    def outputs(self, activations: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self.score(activations)
        return {SCORE: scores, THRESHOLD: tf.fill(tf.shape(scores), tf.identity(self.threshold))}


@dataclass(frozen=True)
class Fit:
    """A fitted detector and how it was made (for the report)."""

    detector: OodDetector
    layer: str
    dims: int  # dimensions of the layer's summary
    kept: int  # principal components kept
    fit_count: int  # training images the Gaussian was fitted on
    calibration_count: int  # held-out images the threshold was calibrated on
    coverage: float
    threshold: float


def tapped_pass(taps: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layer summaries, probabilities, labels) over an unbatched `(uint8 image, label)` pipeline,
    streamed in batches (a folder of photos never sits in memory whole)."""
    features, probabilities, labels = [], [], []
    for images, truth in ds.batch(BATCH):
        tapped, probs = taps(tf.cast(images, tf.float32), training=False)
        features.append(summarise(tapped).numpy())
        probabilities.append(keras.ops.convert_to_numpy(probs))
        labels.append(truth.numpy())
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(features), np.concatenate(probabilities), np.concatenate(labels).astype(np.int64)


def score_features(features: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The OOD score of layer summaries, in numpy (the graph computes the same in float32)."""
    z = (features.astype(np.float32) - mean.astype(np.float32)) @ projection.astype(np.float32)
    return np.mean(z * z, axis=1)


def whitening(features: np.ndarray, max_dims: int = MAX_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) such that `(x - mean) @ projection` has unit variance in each kept direction."""
    mean = features.mean(axis=0)
    centred = features - mean
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    variances, directions = np.linalg.eigh(covariance)  # ascending
    keep = min(max_dims, len(variances))
    variances, directions = variances[::-1][:keep], directions[:, ::-1][:, :keep]
    ridge = RIDGE * max(float(np.mean(np.maximum(variances, 0.0))), 1e-12)
    return mean, directions / np.sqrt(np.maximum(variances, 0.0) + ridge)


def calibrate(scores: np.ndarray, coverage: float = COVERAGE) -> float:
    """The smallest observed score with at least `coverage` of `scores` at or under it."""
    if len(scores) == 0:
        raise ValueError("no held-out images to calibrate the out-of-distribution threshold on")
    return float(np.quantile(scores, coverage, method="higher"))


def fit(model: keras.Model, layer: str, train: tf.data.Dataset, held_out: tf.data.Dataset,
        coverage: float = COVERAGE) -> Fit:
    """Fit the Gaussian on (up to FIT_MAX of) the `train` images, calibrate on all of `held_out`.

    Both are unbatched `(uint8 image, label)` pipelines without augmentation, like DataSplits'.
    Raises ValueError when there are too few images for either.
    """
    taps = tap_model(model, layer)
    train_features, _, _ = tapped_pass(taps, train.take(FIT_MAX))
    if len(train_features) < 2:
        raise ValueError("too few training images to fit the out-of-distribution detector")
    mean, projection = whitening(train_features)
    held_features, _, _ = tapped_pass(taps, held_out)
    threshold = calibrate(score_features(held_features, mean, projection), coverage)
    return Fit(detector=OodDetector(mean, projection, threshold, layer), layer=layer,
               dims=train_features.shape[1], kept=projection.shape[1], fit_count=len(train_features),
               calibration_count=len(held_features), coverage=coverage, threshold=threshold)
