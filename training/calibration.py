"""Fitting a trained model's OOD detector and judging it, for training and for re-exports.

One pass per split, with the model's tapped copy (training.ood.tap_model) so the class
probabilities and the OOD score of each image come from the same forward pass:

1. fit the detector on the training split, calibrate its threshold on the validation split;
2. score the test split: the usual evaluation (accuracy, confusion) plus coverage and accuracy
   when confident under the gateway's rules with the guard (training.selective);
3. score the out-of-distribution set (training.oodset), decoded as the gateway decodes uploads.

The OOD set needs scikit-image (the `ml` extra); without it the report says so and step 3 is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import keras

from training import oodset
from training.datasets import DataSplits
from training.imaging import InputSpec
from training.ood import Fit, fit, tap_model, tapped_pass
from training.selective import Judgement, judge
from training.trainer import Evaluation, evaluation_of


@dataclass(frozen=True)
class Calibrated:
    fit: Fit
    evaluation: Evaluation
    judgement: Judgement


def ood_set_outputs(taps: keras.Model, fitted: Fit, spec: InputSpec, seed: int = 0) -> dict:
    """Probabilities and OOD scores of the OOD set (training.oodset.build(seed)); raises OodSetError."""
    items = oodset.build(seed)
    pixels = oodset.to_pixels(items, spec.height, spec.width, spec.channels)
    features, probabilities, _ = tapped_pass(taps, tf.data.Dataset.from_tensor_slices((pixels, np.zeros(len(pixels)))))
    return {"names": [item.name for item in items], "groups": [item.group for item in items],
            "probabilities": probabilities, "ood_scores": fitted.detector.score_features(features)}


def calibrate(model: keras.Model, layer: str, splits: DataSplits, spec: InputSpec,
              echo: Callable[[str], None] = print) -> Calibrated:
    """Fit, calibrate and judge the OOD detector of `model` on `splits` (see the module doc)."""
    fitted = fit(model, layer, splits.train, splits.val)
    echo(f"out-of-distribution detector on {layer} ({fitted.dims} dimensions, {fitted.kept} kept): fitted on "
         f"{fitted.fit_count} training images, threshold {fitted.threshold:.3f} passes "
         f"{fitted.coverage:.1%} of {fitted.calibration_count} validation images")
    taps = tap_model(model, layer)
    features, probabilities, truth = tapped_pass(taps, splits.test)
    evaluation = evaluation_of(probabilities, truth, len(splits.labels))
    try:
        ood_set = ood_set_outputs(taps, fitted, spec)
    except oodset.OodSetError as exc:
        echo(f"out-of-distribution set skipped: {exc}")
        ood_set = None
    judgement = judge(splits.labels, probabilities, truth, fitted.detector.score_features(features),
                      fitted.threshold, ood_set)
    guarded = judgement.numbers["with_ood_guard"]
    line = (f"{splits.test_name} with the default rules and the guard: confident on {guarded['coverage']:.1%}, "
            f"right on {guarded['accuracy']:.1%} of those")
    if ood_set is not None:
        line += f"; out-of-distribution set: {judgement.numbers['ood_set']['all']['not_sure']:.1%} answered not sure"
    echo(line)
    return Calibrated(fit=fitted, evaluation=evaluation, judgement=judgement)
