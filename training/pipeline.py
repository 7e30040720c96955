"""One training run from start to finish: data -> model -> fit -> test -> export -> report.

`Options` is everything the command line decided; `run` does the work and returns where the model
and the report went. Nothing here parses arguments or reads the environment.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.backbones import BACKBONES, build_model
from training.datasets import DATASETS
from training.errors import TrainingError
from training.export import export_model, inference_copy
from training.report import write_report
from training.trainer import TrainConfig, evaluate, train

EXPORT_SAMPLES = 16  # test images used for warm-up records and export verification
DEFAULT_REPORTS = Path("reports/training")


@dataclass(frozen=True)
class Options:
    dataset: str
    data_dir: Path | None
    backbone: str
    weights: str | None
    epochs: int
    batch_size: int
    limit: int | None
    seed: int
    learning_rate: float
    warmup_fraction: float
    model_name: str
    models_dir: Path
    report_dir: Path | None
    profile: str


@dataclass(frozen=True)
class Outcome:
    export_dir: Path
    report_page: Path
    test_accuracy: float
    saved_model_bytes: int


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _samples(ds: tf.data.Dataset, count: int) -> np.ndarray:
    return np.stack([image.numpy() for image, _ in ds.take(count)])


def run(options: Options, echo: Callable[[str], None] = print) -> Outcome:
    """Train and export as `options` say; raises TrainingError for problems the user can fix."""
    started = time.monotonic()
    source = DATASETS[options.dataset]
    data_dir = options.data_dir or source.default_dir
    if data_dir is None:
        raise TrainingError(f"--dataset {options.dataset} needs --data-dir DIR")
    backbone = BACKBONES[options.backbone]
    spec = backbone.input_for(source.natural_spec)

    keras.utils.set_random_seed(options.seed)
    splits = source.load(data_dir, spec, limit=options.limit, seed=options.seed)
    model = build_model(backbone, spec, len(splits.labels), options.weights)
    echo(f"{splits.description}: {splits.train_count} training, {splits.val_count} validation, "
         f"{splits.test_count} {splits.test_name} images, {len(splits.labels)} classes")
    echo(f"model {backbone.name} ({model.count_params():,} parameters) at {spec.height}x{spec.width}x"
         f"{spec.channels}; {options.epochs} epochs, batch {options.batch_size}, profile {options.profile}")

    train_started = time.monotonic()
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size,
                         learning_rate=options.learning_rate, warmup_fraction=options.warmup_fraction)
    epochs = train(model, splits, source.augmentation, config, echo=echo)
    train_seconds = time.monotonic() - train_started

    evaluation = evaluate(model, splits.test, len(splits.labels))
    echo(f"{splits.test_name} accuracy {evaluation.accuracy:.4f} on {evaluation.count} images")

    export_dir = export_model(model, splits.labels, spec, options.models_dir / options.model_name,
                              _samples(splits.test, EXPORT_SAMPLES), model_name=options.model_name)
    size = _dir_bytes(export_dir)
    echo(f"exported {export_dir} ({size / 1e6:.2f} MB), verified by reloading")

    finished = dt.datetime.now().astimezone()
    report_dir = options.report_dir or (
        DEFAULT_REPORTS / f"{options.model_name}-v{export_dir.name}-{finished:%Y%m%d-%H%M%S}")
    report_dir.mkdir(parents=True, exist_ok=True)
    inference_copy(model).save_weights(report_dir / "model.weights.h5")  # for --weights PATH
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()}
    page = write_report(report_dir, run={
        "model_name": options.model_name, "version": int(export_dir.name), "export_dir": str(export_dir),
        "saved_model_bytes": size, "data": splits.description, "train_count": splits.train_count,
        "val_count": splits.val_count, "test_count": splits.test_count, "test_split": splits.test_name,
        "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.monotonic() - started, 1),
        "finished": finished.isoformat(timespec="seconds"), "tensorflow": tf.__version__,
        "keras": keras.__version__, "parameters": model.count_params(), "settings": settings,
    }, epochs=epochs, evaluation=evaluation, labels=splits.labels)
    echo(f"report: {page}")
    return Outcome(export_dir=export_dir, report_page=page, test_accuracy=evaluation.accuracy,
                   saved_model_bytes=size)
