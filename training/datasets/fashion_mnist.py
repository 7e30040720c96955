"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (or any dir of its idx files).

70,000 grey 28x28 images of ten clothing classes: 60,000 to train on (of which a slice is held out
for validation) and 10,000 kept for the final test. Small enough (47 MB) to hold in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from training.augment import Augmentation
from training.datasets.common import DataSplits, seeded_permutation, val_count_for
from training.datasets.idx import read_idx
from training.errors import TrainingError
from training.imaging import InputSpec, fit_to_input

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _not_found(what: str) -> TrainingError:
    return TrainingError(
        f"Fashion-MNIST not found: {what} (install the Debian package {DEBIAN_PACKAGE}: "
        f"apt-get install {DEBIAN_PACKAGE}, or pass --data-dir DIR holding the four idx files)")


def _find(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise _not_found(f"{data_dir / (stem + '.gz')} is missing")


def load_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    """The four arrays: images `[n, 28, 28, 1]` uint8 and labels `[n]` int32, checked for sense."""
    if not data_dir.is_dir():
        raise _not_found(f"{data_dir} is not a directory")
    arrays = {key: read_idx(_find(data_dir, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise TrainingError(f"Fashion-MNIST {split} files in {data_dir} do not hold 28x28 images "
                                f"with one label each (images {images.shape}, labels {labels.shape})")
        if labels.max(initial=0) >= len(LABELS):
            raise TrainingError(f"Fashion-MNIST {split} labels in {data_dir} go beyond the 10 classes")
        arrays[f"{split}_images"] = images[..., np.newaxis]
        arrays[f"{split}_labels"] = labels.astype(np.int32)
    return arrays


class FashionMnist:
    """The `fashion_mnist` data source."""

    natural_spec = InputSpec(28, 28, 1)
    augmentation = Augmentation(flip_horizontal=True, max_shift=0.08, fill="CONSTANT")
    default_dir: Path | None = DEBIAN_DIR

    def load(self, data_dir: Path, spec: InputSpec, *, limit: int | None, seed: int) -> DataSplits:
        arrays = load_arrays(data_dir)
        order = seeded_permutation(len(arrays["train_images"]), seed)
        if limit is not None:
            order = order[:limit]
        n_val = val_count_for(len(order))
        val_idx, train_idx = order[:n_val], order[n_val:]
        if len(train_idx) == 0:
            raise TrainingError(f"--limit {limit} leaves no training images after the validation slice")

        def pipeline(images: np.ndarray, labels: np.ndarray, shuffle: bool = False) -> tf.data.Dataset:
            ds = tf.data.Dataset.from_tensor_slices((images, labels))
            if shuffle:  # before any resizing, so the buffer holds small raw images
                ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            if spec != self.natural_spec:
                ds = ds.map(lambda x, y: (fit_to_input(x, spec), y), num_parallel_calls=tf.data.AUTOTUNE)
            return ds

        return DataSplits(
            labels=list(LABELS),
            train=pipeline(arrays["train_images"][train_idx], arrays["train_labels"][train_idx], shuffle=True),
            val=pipeline(arrays["train_images"][val_idx], arrays["train_labels"][val_idx]),
            test=pipeline(arrays["test_images"], arrays["test_labels"]),
            train_count=len(train_idx),
            val_count=len(val_idx),
            test_count=len(arrays["test_images"]),
            description=f"Fashion-MNIST from {data_dir}",
        )
