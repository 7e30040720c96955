"""One training run from start to finish: data -> model -> fit -> test -> export -> report.

After training, the out-of-distribution detector is fitted and calibrated (training.calibration)
and exported with the model, compressed variants included (they share the float32 detector).

A transfer backbone trains in two phases: the head on the frozen base, then (`fine_tune_epochs`)
the top `fine_tune_layers` of the base too, at `fine_tune_learning_rate`. Each phase stops early
when validation loss stalls and keeps its best epoch's weights. `compress` adds smaller variants of
the export (training.compress) as separate models `<name>-<codec>`, measured beside the original.

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

from training import transfer
from training.backbones import BACKBONES, Backbone, build_model
from training.calibration import calibrate
from training.compress import CODECS
from training.datasets import DATASETS, DataSplits
from training.errors import TrainingError
from training.export import PIXELS_SIGNATURE, dir_bytes, export_model, inference_copy
from training.report import write_report
from training.trainer import EVAL_BATCH, EpochStats, TrainConfig, balanced_class_weights, train

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
    image_size: int | None = None  # square input instead of the backbone's own
    patience: int | None = 3  # epochs without val_loss improvement before stopping (None: never)
    class_weights: str = "balanced"  # or "none"
    fine_tune_epochs: int | None = None  # None: as many as `epochs` for transfer backbones
    fine_tune_layers: int | None = None  # None: the backbone's default
    fine_tune_learning_rate: float | None = None  # None: learning_rate / 100
    compress: tuple[str, ...] = ()  # names from training.compress.CODECS


@dataclass(frozen=True)
class Variant:
    """One exported model as measured after reloading: what the size/accuracy/latency table shows."""

    model_name: str
    export_dir: Path
    weights: str  # float32, float16, int8
    saved_model_bytes: int
    accuracy: float
    latency_ms: float  # median of single-image serving_default calls


@dataclass(frozen=True)
class Outcome:
    export_dir: Path
    report_page: Path
    test_accuracy: float
    saved_model_bytes: int
    variants: tuple[Variant, ...] = ()


def _samples(ds: tf.data.Dataset, count: int) -> np.ndarray:
    return np.stack([image.numpy() for image, _ in ds.take(count)])


def _measure(model_name: str, export_dir: Path, weights: str, ds: tf.data.Dataset, repeats: int = 20) -> Variant:
    """Accuracy over `ds` and single-image latency of the SavedModel in `export_dir`, reloaded."""
    predict = tf.saved_model.load(str(export_dir)).signatures[PIXELS_SIGNATURE]
    correct = count = 0
    for images, labels in ds.batch(EVAL_BATCH):
        predicted = predict(images=images)["scores"].numpy().argmax(axis=1)
        correct += int((predicted == labels.numpy()).sum())
        count += len(predicted)
    one = next(iter(ds.take(1)))[0][tf.newaxis]
    predict(images=one)  # the first call traces
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(images=one)
        timings.append(time.perf_counter() - start)
    return Variant(model_name=model_name, export_dir=export_dir, weights=weights,
                   saved_model_bytes=dir_bytes(export_dir), accuracy=correct / max(count, 1),
                   latency_ms=1000 * float(np.median(timings)))


def _fine_tune_plan(options: Options, backbone: Backbone) -> tuple[int, int, float]:
    """(epochs, layers, learning rate) of the fine-tuning phase; epochs 0 means no such phase."""
    asked = options.fine_tune_epochs is not None or options.fine_tune_layers is not None
    if not backbone.fine_tune_layers:
        if asked and (options.fine_tune_epochs or options.fine_tune_layers):
            raise TrainingError(f"backbone {backbone.name} has no pre-trained base to fine-tune; "
                                f"drop --fine-tune-epochs/--fine-tune-layers")
        return 0, 0, 0.0
    epochs = options.epochs if options.fine_tune_epochs is None else options.fine_tune_epochs
    layers = backbone.fine_tune_layers if options.fine_tune_layers is None else options.fine_tune_layers
    rate = options.fine_tune_learning_rate or options.learning_rate / 100
    return (epochs if layers else 0), layers, rate


def _train_phases(model: keras.Model, splits: DataSplits, options: Options, backbone: Backbone,
                  augmentation, echo: Callable[[str], None]) -> list[EpochStats]:
    weights = None
    if options.class_weights == "balanced" and splits.train_class_counts:
        weights = balanced_class_weights(splits.train_class_counts)
        if weights:
            echo("class weights " + ", ".join(f"{splits.labels[i]} {w:.2f}" for i, w in weights.items()))
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size,
                         learning_rate=options.learning_rate, warmup_fraction=options.warmup_fraction,
                         patience=options.patience, class_weight=weights,
                         phase="head" if backbone.fine_tune_layers else "")
    epochs = train(model, splits, augmentation, config, echo=echo)
    ft_epochs, ft_layers, ft_rate = _fine_tune_plan(options, backbone)
    if ft_epochs:
        unfrozen = transfer.unfreeze_top(model, ft_layers)
        echo(f"fine-tuning the top {ft_layers} base layers ({unfrozen} trainable, batch norm frozen) "
             f"at learning rate {ft_rate:.1e}")
        config = TrainConfig(epochs=ft_epochs, batch_size=options.batch_size, learning_rate=ft_rate,
                             warmup_fraction=options.warmup_fraction, patience=options.patience,
                             class_weight=weights, first_epoch=len(epochs) + 1, phase="fine-tune")
        epochs += train(model, splits, augmentation, config, echo=echo)
    return epochs


def run(options: Options, echo: Callable[[str], None] = print) -> Outcome:
    """Train and export as `options` say; raises TrainingError for problems the user can fix."""
    started = time.monotonic()
    source = DATASETS[options.dataset]
    data_dir = options.data_dir or source.default_dir
    if data_dir is None:
        raise TrainingError(f"--dataset {options.dataset} needs --data-dir DIR")
    backbone = BACKBONES[options.backbone]
    spec = backbone.input_for(source.natural_spec, options.image_size)
    _fine_tune_plan(options, backbone)  # refuse a contradiction before loading anything

    keras.utils.set_random_seed(options.seed)
    splits = source.load(data_dir, spec, limit=options.limit, seed=options.seed)
    model = build_model(backbone, spec, len(splits.labels), options.weights)
    echo(f"{splits.description}: {splits.train_count} training, {splits.val_count} validation, "
         f"{splits.test_count} {splits.test_name} images, {len(splits.labels)} classes")
    echo(f"model {backbone.name} ({model.count_params():,} parameters) at {spec.height}x{spec.width}x"
         f"{spec.channels}; {options.epochs} epochs, batch {options.batch_size}, profile {options.profile}")

    train_started = time.monotonic()
    epochs = _train_phases(model, splits, options, backbone, source.augmentation, echo)
    train_seconds = time.monotonic() - train_started

    calibrated = calibrate(model, backbone.ood_layer, splits, spec, echo)
    evaluation = calibrated.evaluation
    echo(f"{splits.test_name} accuracy {evaluation.accuracy:.4f} on {evaluation.count} images")

    samples = _samples(splits.test, EXPORT_SAMPLES)
    detector = calibrated.fit.detector
    export_dir = export_model(model, splits.labels, spec, options.models_dir / options.model_name,
                              samples, model_name=options.model_name, ood=detector)
    size = dir_bytes(export_dir)
    echo(f"exported {export_dir} ({size / 1e6:.2f} MB), verified by reloading")
    variants: list[Variant] = []
    if options.compress:
        variants.append(_measure(options.model_name, export_dir, "float32", splits.test))
    for codec in options.compress:
        name = f"{options.model_name}-{codec}"
        small_dir = export_model(model, splits.labels, spec, options.models_dir / name, samples,
                                 model_name=name, codec=CODECS[codec], ood=detector)
        variants.append(_measure(name, small_dir, codec, splits.test))
    for v in variants:
        echo(f"{v.model_name:<24} {v.weights:<8} {v.saved_model_bytes / 1e6:8.2f} MB "
             f"({size / v.saved_model_bytes:.1f}x smaller)  {splits.test_name} accuracy {v.accuracy:.4f}  "
             f"{v.latency_ms:.1f} ms/image  {v.export_dir}")

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
        "variants": [{**asdict(v), "export_dir": str(v.export_dir)} for v in variants],
    }, epochs=epochs, evaluation=evaluation, labels=splits.labels, calibrated=calibrated)
    echo(f"report: {page}")
    return Outcome(export_dir=export_dir, report_page=page, test_accuracy=evaluation.accuracy,
                   saved_model_bytes=size, variants=tuple(variants))
