"""The training report: JSON numbers, PNG curves and confusion matrix, and a Markdown page.

Everything needed to judge a run without re-running it: per-epoch loss and accuracy (training and
validation), test accuracy overall and per class, the confusion matrix, timings and settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from training.trainer import EpochStats, Evaluation

JSON_FILE, CURVES_FILE, CONFUSION_FILE, PAGE_FILE = "report.json", "curves.png", "confusion.png", "report.md"


def _plot_curves(epochs: list[EpochStats], path: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    x = [e.epoch for e in epochs]
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        ax.plot(x, [getattr(e, metric) for e in epochs], marker="o", label="training")
        ax.plot(x, [getattr(e, f"val_{metric}") for e in epochs], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def _plot_confusion(confusion: np.ndarray, labels: list[str], path: Path) -> None:
    size = max(5.0, 0.6 * len(labels) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    threshold = confusion.max() / 2 if confusion.size else 0
    if len(labels) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")
    fig.savefig(path, dpi=100)


def _page(run: dict, epochs: list[EpochStats], evaluation: Evaluation, labels: list[str]) -> str:
    rows = "\n".join(
        f"| {e.epoch} | {e.loss:.4f} | {e.accuracy:.4f} | {e.val_loss:.4f} | {e.val_accuracy:.4f} "
        f"| {e.learning_rate:.2e} | {e.seconds:.0f} |" for e in epochs)
    per_class = "\n".join(f"| {label} | {acc:.4f} |"
                          for label, acc in zip(labels, evaluation.per_class_accuracy()))
    settings = "\n".join(f"| {key} | {value} |" for key, value in run["settings"].items())
    return f"""# Training report: {run['model_name']} version {run['version']}

**{run['test_split']} accuracy {evaluation.accuracy:.4f}** on {evaluation.count} images
(loss {evaluation.loss:.4f}). SavedModel `{run['export_dir']}`, {run['saved_model_bytes'] / 1e6:.2f} MB.
Training {run['train_seconds'] / 60:.1f} min, whole run {run['wall_seconds'] / 60:.1f} min
({run['finished']}, TensorFlow {run['tensorflow']}, Keras {run['keras']}).

Data: {run['data']}; {run['train_count']} training, {run['val_count']} validation,
{run['test_count']} {run['test_split']} images.

![loss and accuracy per epoch]({CURVES_FILE})

| epoch | loss | accuracy | val loss | val accuracy | learning rate | seconds |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

![confusion matrix]({CONFUSION_FILE})

| class | {run['test_split']} accuracy |
|---|---:|
{per_class}

## Settings

| setting | value |
|---|---|
{settings}

Numbers: [{JSON_FILE}]({JSON_FILE}).
"""


def write_report(report_dir: Path, *, run: dict, epochs: list[EpochStats], evaluation: Evaluation,
                 labels: list[str]) -> Path:
    """Write the report files into `report_dir`; returns the Markdown page's path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    document = {
        **run,
        "labels": labels,
        "epochs": [e.as_dict() for e in epochs],
        "test": {"accuracy": evaluation.accuracy, "loss": evaluation.loss, "count": evaluation.count,
                 "per_class_accuracy": dict(zip(labels, evaluation.per_class_accuracy())),
                 "confusion_matrix": evaluation.confusion.tolist()},
    }
    (report_dir / JSON_FILE).write_text(json.dumps(document, indent=2) + "\n")
    _plot_curves(epochs, report_dir / CURVES_FILE)
    _plot_confusion(evaluation.confusion, labels, report_dir / CONFUSION_FILE)
    page = report_dir / PAGE_FILE
    page.write_text(_page(run, epochs, evaluation, labels))
    return page
