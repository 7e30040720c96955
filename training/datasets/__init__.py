"""Where training images come from: a registry of data sources by `--dataset` name.

Every source yields the same `DataSplits` (unbatched `tf.data` pipelines of uint8 images already at
the model's input size, plus labels and counts), so the trainer never knows which one it has.
"""

from __future__ import annotations

from training.datasets.common import DataSource, DataSplits
from training.datasets.fashion_mnist import FashionMnist
from training.datasets.folder import ImageFolder

DATASETS: dict[str, DataSource] = {
    "fashion_mnist": FashionMnist(),
    "folder": ImageFolder(),
}

__all__ = ["DATASETS", "DataSource", "DataSplits"]
