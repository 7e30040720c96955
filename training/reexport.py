"""`python -m training.reexport VERSION_DIR`: the same weights, exported again with today's code.

When the export code changes (a signature fixed, warm-up records added), a model does not need
training again to get the change: its weights are read back from the SavedModel's checkpoint into
the same architecture, the copy is proven to give the old version's scores (within 1e-5), and
it is written by the normal export path (`training.export`: atomic, verified by reloading).

The out-of-distribution detector (training.ood) is fitted again on the training data and
calibrated on the validation split, so the data the version was trained on must be given the
same way as to `python -m training` (`--dataset`, `--data-dir`, `--limit`, `--seed`: the same
values give the same split, and the threshold is calibrated on images the weights never saw).
Its evaluation (training.report's OOD part: ood.md, ood.json, coverage.png) goes to `--report-dir`.

The new SavedModel becomes the next version, which TF Serving loads beside the old one like any
rollout. `--replace` swaps it in under the old version number instead: only for a model that no
server is serving at that moment (TF Serving does not reload a version it already has).

The architecture must be given (`--backbone`, default small_cnn), since a SavedModel does not keep
its Keras config; the input size and the labels are read from the `serving_default` signature.
Compressed variants (`<name>-float16`, `<name>-int8`) are re-made by training with `--compress`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from training.quiet import import_tensorflow_quietly

PIXELS_KEY = "images"


def build_parser() -> argparse.ArgumentParser:
    from training.backbones import BACKBONES  # cheap: argparse choices only

    parser = argparse.ArgumentParser(
        prog="python -m training.reexport",
        description="Export a model version's weights again with the current export code (signatures, "
                    "warm-up records), as the next version or in place.")
    parser.add_argument("version_dir", type=Path, help="a version directory, e.g. models/fashion/1")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="small_cnn",
                        help="the architecture the version was trained with (default: small_cnn)")
    parser.add_argument("--replace", action="store_true",
                        help="write it under the same version number (no server may be serving it)")
    data = parser.add_argument_group("the training data, for the out-of-distribution calibration "
                                     "(as given to python -m training)")
    data.add_argument("--dataset", choices=("fashion_mnist", "folder"), default="fashion_mnist",
                      help="default fashion_mnist")
    data.add_argument("--data-dir", type=Path, metavar="DIR",
                      help="default for fashion_mnist: the Debian package's directory; required for folder")
    data.add_argument("--limit", type=int, metavar="N",
                      help="the --limit the version was trained with (default: all training images)")
    data.add_argument("--seed", type=int, default=42, metavar="N",
                      help="the --seed the version was trained with, which decides the validation split (default 42)")
    parser.add_argument("--report-dir", type=Path, metavar="DIR",
                        help="where the out-of-distribution report goes "
                             "(default reports/training/<name>-v<version>-reexport-<timestamp>/)")
    return parser


def _warmup_images(version_dir: Path, spec):
    """The pixel batches of the old version's warm-up records (real images), else a grey ramp."""
    import numpy as np
    import tensorflow as tf

    from training.export import PIXELS_SIGNATURE
    from training.warmup import read_warmup

    try:
        batches = [tf.make_ndarray(log.predict_log.request.inputs[PIXELS_KEY]) for log in read_warmup(version_dir)
                   if log.predict_log.request.model_spec.signature_name in ("", PIXELS_SIGNATURE)]
    except (OSError, tf.errors.OpError):
        batches = []
    if batches:
        return max(batches, key=len)
    ramp = np.linspace(0, 255, num=8 * int(np.prod(spec.shape)), dtype=np.float32)
    return ramp.astype(np.uint8).reshape(8, *spec.shape)


def reexport(version_dir: Path, backbone_name: str, replace: bool = False, *, dataset: str = "fashion_mnist",
             data_dir: Path | None = None, limit: int | None = None, seed: int = 42,
             report_dir: Path | None = None, echo=print) -> Path:
    """Re-export `version_dir`, its OOD detector fitted on `dataset`; returns the new SavedModel's directory."""
    import datetime as dt

    import numpy as np
    import tensorflow as tf

    from training.backbones import BACKBONES, build_model
    from training.calibration import calibrate
    from training.datasets import DATASETS
    from training.errors import ExportError, TrainingError
    from training.export import PIXELS_SIGNATURE, TOLERANCE, ServingModule, export_model
    from training.imaging import InputSpec
    from training.report import write_ood_report

    if not (version_dir / "saved_model.pb").is_file() or not version_dir.name.isdigit():
        raise TrainingError(f"{version_dir} is not a model version directory (<models-dir>/<name>/<number>/)")
    try:
        old = tf.saved_model.load(str(version_dir)).signatures[PIXELS_SIGNATURE]
        spec = InputSpec(*old.structured_input_signature[1][PIXELS_KEY].shape.as_list()[1:])
        labels = [c.decode() for c in old(images=tf.zeros([1, *spec.shape], tf.uint8))["classes"].numpy()[0]]
    except (KeyError, TypeError, ValueError, OSError, tf.errors.OpError) as exc:
        raise TrainingError(f"{version_dir} has no usable {PIXELS_SIGNATURE} signature: {exc}") from None

    # The checkpoint inside a SavedModel is keyed by the saved object graph, so the weights are
    # restored into a ServingModule over the same architecture, the object that was saved.
    module = ServingModule(build_model(BACKBONES[backbone_name], spec, len(labels), "none"), labels, spec)
    try:
        tf.train.Checkpoint(module).read(str(version_dir / "variables" / "variables")).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise TrainingError(f"the weights of {version_dir} do not fit {backbone_name} at {spec.shape} with "
                            f"{len(labels)} classes (trained with another --backbone, or a compressed "
                            f"variant?): {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}") from None
    model = module.model
    samples = _warmup_images(version_dir, spec)
    diff = float(np.max(np.abs(old(images=tf.constant(samples))["scores"].numpy()
                               - model(samples.astype(np.float32), training=False).numpy())))
    if diff > TOLERANCE:
        raise ExportError(f"the restored weights compute other scores than {version_dir} (max difference {diff:.2e})")

    source = DATASETS[dataset]
    if (data_dir or source.default_dir) is None:
        raise TrainingError(f"--dataset {dataset} needs --data-dir DIR")
    splits = source.load(data_dir or source.default_dir, spec, limit=limit, seed=seed)
    if splits.labels != labels:
        raise TrainingError(f"the data's labels {splits.labels} are not the model's {labels}")
    calibrated = calibrate(model, BACKBONES[backbone_name].ood_layer, splits, spec, echo)
    base = version_dir.parent
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    report_dir = report_dir or Path("reports/training") / f"{base.name}-v{version_dir.name}-reexport-{stamp}"
    page = write_ood_report(report_dir, calibrated, test_name=splits.test_name,
                            title=f"Out-of-distribution guard: {base.name} version {version_dir.name} (re-exported)")
    echo(f"report: {page}")

    detector = calibrated.fit.detector
    if not replace:
        return export_model(model, labels, spec, base, samples, model_name=base.name, ood=detector)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-reexport-", dir=base))  # not a number: servers ignore it
    try:
        fresh = export_model(model, labels, spec, staging, samples, model_name=base.name, ood=detector)
        aside = staging / "old"
        os.rename(version_dir, aside)
        try:
            os.rename(fresh, version_dir)
        except OSError:
            os.rename(aside, version_dir)  # the old version back before anything is removed
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


def main(argv: list[str] | None = None) -> int:
    import_tensorflow_quietly()
    args = build_parser().parse_args(argv)
    from training.errors import exit_code_of
    from training.export import dir_bytes

    def run() -> None:
        target = reexport(args.version_dir, args.backbone, args.replace, dataset=args.dataset, data_dir=args.data_dir,
                          limit=args.limit, seed=args.seed, report_dir=args.report_dir,
                          echo=lambda line: print(line, flush=True))
        size = dir_bytes(target)
        print(f"re-exported {args.version_dir} as {target} ({size / 1e6:.2f} MB): same scores, current signatures, "
              f"out-of-distribution score calibrated",
              flush=True)

    return exit_code_of(run)


if __name__ == "__main__":
    sys.exit(main())
