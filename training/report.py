"""The training report: JSON numbers, PNG curves and confusion matrix, and a Markdown page.

Everything needed to judge a run without re-running it: per-epoch loss and accuracy (training and
validation), test accuracy overall and per class, the confusion matrix, timings and settings, and
the out-of-distribution guard (training.calibration): its calibration, coverage and accuracy when
confident, a coverage-accuracy curve, a selective-accuracy table and the rejection rate on the
OOD set. A re-export writes that last part alone (`write_ood_report`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from training.calibration import Calibrated
from training.trainer import EpochStats, Evaluation

JSON_FILE, CURVES_FILE, CONFUSION_FILE, PAGE_FILE = "report.json", "curves.png", "confusion.png", "report.md"
COVERAGE_FILE, OOD_JSON_FILE, OOD_PAGE_FILE = "coverage.png", "ood.json", "ood.md"


def _plot_coverage(calibrated: Calibrated, path: Path) -> None:
    judgement = calibrated.judgement
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for points, label in ((judgement.ood_curve, "OOD threshold swept (default class-score rule)"),
                          (judgement.score_curve, "top-score threshold swept (OOD guard on, no margin rule)")):
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.plot(*judgement.chosen, marker="*", markersize=14, linestyle="none", color="black",
            label=f"chosen: OOD threshold {calibrated.fit.threshold:.3g}, min_score 0.5, min_margin 0.1")
    ax.set_xlabel("coverage (share of images answered with a label)")
    ax.set_ylabel("accuracy when confident")
    ax.set_title("Coverage and accuracy (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.2%}"


def ood_document(calibrated: Calibrated) -> dict:
    fitted = calibrated.fit
    return {"method": "Mahalanobis distance on per-channel mean and std of one layer, single Gaussian",
            "layer": fitted.layer, "dimensions": fitted.dims, "kept": fitted.kept, "fit_count": fitted.fit_count,
            "calibration_count": fitted.calibration_count, "target_coverage": fitted.coverage,
            **calibrated.judgement.numbers}


def _ood_section(calibrated: Calibrated, test_name: str) -> str:
    fitted, numbers = calibrated.fit, calibrated.judgement.numbers
    rules, guarded = numbers["rules_only"], numbers["with_ood_guard"]
    text = f"""## Knowing what it does not know

Out-of-distribution score (`ood_score` in both signatures): the squared Mahalanobis distance of
layer `{fitted.layer}`'s per-channel means and standard deviations ({fitted.dims} dimensions,
{fitted.kept} kept) from a Gaussian fitted on {fitted.fit_count} training images, per dimension.
Threshold `ood_threshold` = **{fitted.threshold:.4g}**: the {fitted.coverage:.1%} quantile on
{fitted.calibration_count} validation images. On the {numbers['count']} {test_name} images,
{_pct(numbers['in_distribution_pass'])} are under it.

| {test_name}, gateway rules (min_score 0.5, min_margin 0.1) | confident | right when confident |
|---|---:|---:|
| class-score rules only | {_pct(rules['coverage'])} | {_pct(rules['accuracy'])} |
| with the OOD guard | **{_pct(guarded['coverage'])}** | **{_pct(guarded['accuracy'])}** |

![coverage and accuracy]({COVERAGE_FILE})
"""
    if "table" in numbers:
        rows = "\n".join(f"| {r['min_score']} | {r['min_margin']} | {_pct(r['rules_only']['coverage'])} | "
                         f"{_pct(r['rules_only']['accuracy'])} | {_pct(r['with_ood_guard']['coverage'])} | "
                         f"{_pct(r['with_ood_guard']['accuracy'])} |" for r in numbers["table"])
        text += f"""
Selective accuracy ({test_name}): what each `thresholds.multiclass` setting of the gateway gives.

| min_score | min_margin | confident | right | confident, OOD guard | right, OOD guard |
|---:|---:|---:|---:|---:|---:|
{rows}
"""
    if "ood_set" in numbers:
        ood_set = numbers["ood_set"]
        groups = "\n".join(f"| {name} | {g['count']} | {_pct(g['ood_rejected'])} | {_pct(g['not_sure'])} |"
                            for name, g in ood_set["groups"].items())
        photos = "\n".join(f"| {p['name']} | {p['ood_score']:.3g} | {p['label']} | {p['reason']} | "
                            f"{p['top']} {p['top_score']:.2f} |" for p in ood_set["photos"])
        text += f"""
Out-of-distribution set (training/oodset.py; decoded as the gateway decodes uploads):
**{_pct(ood_set['all']['not_sure'])} answered "not sure"** ({_pct(ood_set['all']['ood_rejected'])} by the
OOD guard) of {ood_set['all']['count']} images.

| group | images | over the OOD threshold | answered not sure |
|---|---:|---:|---:|
{groups}

| photo | ood_score | answer | reason | top class score |
|---|---:|---|---|---|
{photos}
"""
    return text


def write_ood_report(report_dir: Path, calibrated: Calibrated, *, title: str, test_name: str = "test") -> Path:
    """The out-of-distribution part alone (for a re-export): ood.md, ood.json, coverage.png."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / OOD_JSON_FILE).write_text(json.dumps(ood_document(calibrated), indent=2) + "\n")
    _plot_coverage(calibrated, report_dir / COVERAGE_FILE)
    page = report_dir / OOD_PAGE_FILE
    page.write_text(f"# {title}\n\n" + _ood_section(calibrated, test_name).split("\n", 2)[2]
                    + f"\nNumbers: [{OOD_JSON_FILE}]({OOD_JSON_FILE}).\n")
    return page


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


def _page(run: dict, epochs: list[EpochStats], evaluation: Evaluation, labels: list[str],
          calibrated: Calibrated | None) -> str:
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

{_ood_section(calibrated, run['test_split']) if calibrated else ""}
## Settings

| setting | value |
|---|---|
{settings}

Numbers: [{JSON_FILE}]({JSON_FILE}).
"""


def write_report(report_dir: Path, *, run: dict, epochs: list[EpochStats], evaluation: Evaluation,
                 labels: list[str], calibrated: Calibrated | None = None) -> Path:
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
    if calibrated is not None:
        document["ood"] = ood_document(calibrated)
        _plot_coverage(calibrated, report_dir / COVERAGE_FILE)
    (report_dir / JSON_FILE).write_text(json.dumps(document, indent=2) + "\n")
    _plot_curves(epochs, report_dir / CURVES_FILE)
    _plot_confusion(evaluation.confusion, labels, report_dir / CONFUSION_FILE)
    page = report_dir / PAGE_FILE
    page.write_text(_page(run, epochs, evaluation, labels, calibrated))
    return page
