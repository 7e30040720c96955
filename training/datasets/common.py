"""What every data source returns, and the split arithmetic they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf

from training.augment import Augmentation
from training.imaging import InputSpec

# Share of the training images held out for per-epoch validation, capped so that big data sets
# do not give away more than they need (5,000 of Fashion-MNIST's 60,000).
VAL_FRACTION = 0.1
VAL_MAX = 5000


@dataclass
class DataSplits:
    """Unbatched pipelines of `(uint8 image [H, W, C], int32 label)` at the model's input size.

    `train` reshuffles on every pass; `val` and `test` keep their order. When a data set has no
    separate test split, `test` is the validation split and `test_name` says so in the report.
    """

    labels: list[str]
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    train_count: int
    val_count: int
    test_count: int
    test_name: str = "test"
    description: str = ""
    #: training images per class index, for class weights (None: not counted, taken as balanced)
    train_class_counts: list[int] | None = None


class DataSource(Protocol):
    """A `--dataset` choice."""

    #: the input a model adapting to the data (small_cnn) should take
    natural_spec: InputSpec
    #: the training-time distortions that suit this data
    augmentation: Augmentation
    #: where the data lives when `--data-dir` is not given (None: the flag is required)
    default_dir: Path | None

    def load(self, data_dir: Path, spec: InputSpec, *, limit: int | None, seed: int) -> DataSplits:
        """Open the data at `data_dir`, delivering images fitted to `spec`; raises TrainingError."""
        ...


def val_count_for(total: int) -> int:
    """How many of `total` training images to hold out for validation (at least one)."""
    return max(1, min(VAL_MAX, round(total * VAL_FRACTION)))


def seeded_permutation(count: int, seed: int) -> np.ndarray:
    """The same shuffle of `range(count)` for the same seed, independent of TensorFlow's state."""
    return np.random.default_rng(seed).permutation(count)
