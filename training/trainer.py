"""Fitting a model on `DataSplits` and measuring it: the training loop and the evaluation.

Keras does the loop; this module feeds it batched, augmented pipelines, sets the optimiser and
schedule, prints one progress line per epoch and keeps the numbers the report needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from training.augment import Augmentation
from training.datasets import DataSplits
from training.schedule import OneCycle

EVAL_BATCH = 512


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float  # the peak of the one-cycle schedule
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.15
    #: stop when val_loss has not improved for this many epochs, and keep the best epoch's weights
    patience: int | None = None
    #: loss weight per class index (None: every class counts the same)
    class_weight: dict[int, float] | None = None
    #: first epoch number to print, so a second phase continues the count
    first_epoch: int = 1
    #: the phase named in each progress line ("" for a single-phase run)
    phase: str = ""


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    phase: str = ""

    def line(self, epochs: int) -> str:
        phase = f"{self.phase} " if self.phase else ""
        return (f"{phase}epoch {self.epoch:>2}/{epochs}  loss {self.loss:.4f}  accuracy {self.accuracy:.4f}  "
                f"val_loss {self.val_loss:.4f}  val_accuracy {self.val_accuracy:.4f}  "
                f"lr {self.learning_rate:.2e}  {self.seconds:.0f}s")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    count: int
    confusion: np.ndarray  # [true class, predicted class] counts

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(axis=1)
        return [float(self.confusion[i, i] / t) if t else float("nan") for i, t in enumerate(totals)]


class _EpochLog(keras.callbacks.Callback):
    """Prints one line per epoch (Keras' own bars are noise in a log file) and keeps the stats."""

    def __init__(self, config: TrainConfig, learning_rate: Callable[[], float], echo: Callable[[str], None]):
        super().__init__()
        self.config, self.learning_rate, self.echo = config, learning_rate, echo
        self.stats: list[EpochStats] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        stats = EpochStats(epoch=self.config.first_epoch + epoch, loss=float(logs["loss"]), accuracy=float(logs["accuracy"]),
                           val_loss=float(logs["val_loss"]), val_accuracy=float(logs["val_accuracy"]),
                           learning_rate=self.learning_rate(), seconds=time.monotonic() - self._start,
                           phase=self.config.phase)
        self.stats.append(stats)
        self.echo(stats.line(self.config.first_epoch + self.config.epochs - 1))


def to_model_input(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 pixels -> float32 pixel values (still 0..255): the models scale inside themselves."""
    return tf.cast(images, tf.float32), labels


def batched(ds: tf.data.Dataset, batch_size: int, augmentation: Augmentation | None = None) -> tf.data.Dataset:
    ds = ds.batch(batch_size)
    if augmentation is not None:
        ds = ds.map(augmentation, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train(model: keras.Model, splits: DataSplits, augmentation: Augmentation, config: TrainConfig,
          echo: Callable[[str], None] = print) -> list[EpochStats]:
    """Compile and fit `model` (its trainable layers); returns the per-epoch statistics, also printed.

    With `config.patience`, training stops once validation loss stops improving and the weights
    of the best epoch are restored, whether or not it stopped early.
    """
    steps_per_epoch = math.ceil(splits.train_count / config.batch_size)
    schedule = OneCycle(peak=config.learning_rate, total_steps=config.epochs * steps_per_epoch,
                        warmup_fraction=config.warmup_fraction)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                  # XLA costs 10-20 s of compiling per run and saved no step time here (CPU)
                  metrics=["accuracy"], jit_compile=False)
    log = _EpochLog(config, lambda: float(schedule(optimizer.iterations)), echo)
    callbacks: list[keras.callbacks.Callback] = [log]
    if config.patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                       restore_best_weights=True))
    model.fit(batched(splits.train, config.batch_size, augmentation),
              validation_data=batched(splits.val, EVAL_BATCH), class_weight=config.class_weight,
              epochs=config.epochs, shuffle=False, verbose=0, callbacks=callbacks)  # data is shuffled
    if len(log.stats) < config.epochs:
        echo(f"early stop: val_loss did not improve for {config.patience} epochs")
    return log.stats


def balanced_class_weights(counts: list[int]) -> dict[int, float] | None:
    """Weights that make every class count as much in the loss as if the classes were equal in size.

    `total / (classes * count)`, as scikit-learn's "balanced"; None when the classes already are.
    """
    total, k = sum(counts), len(counts)
    if len(set(counts)) <= 1 or not all(counts):
        return None
    return {index: total / (k * count) for index, count in enumerate(counts)}


def evaluate(model: keras.Model, ds: tf.data.Dataset, num_classes: int) -> Evaluation:
    """Accuracy, cross-entropy and confusion matrix of `model` over the unbatched split `ds`."""
    probabilities, truth = [], []
    for images, labels in batched(ds, EVAL_BATCH):
        probabilities.append(model(images, training=False).numpy())
        truth.append(labels.numpy())
    return evaluation_of(np.concatenate(probabilities), np.concatenate(truth), num_classes)


def evaluation_of(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> Evaluation:
    """Accuracy, cross-entropy and confusion matrix from predicted probabilities and true labels."""
    labels = labels.astype(np.int64)
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
    return Evaluation(accuracy=float((predicted == labels).mean()), loss=loss, count=len(labels),
                      confusion=confusion.reshape(num_classes, num_classes))
