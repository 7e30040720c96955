"""`python -m training`: the command line in front of training.pipeline.

Problems a user can fix (missing data set, bad folder, unusable --weights) end as one
`error: ...` line on stderr and exit code 2, like a bad flag; a failed export verification exits 1.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from training.profiles import DEFAULT_PROFILE, PROFILES
from training.quiet import import_tensorflow_quietly

if TYPE_CHECKING:  # pipeline imports TensorFlow, which main() imports quietly first
    from training.pipeline import Options

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one directory level, as TF Serving names models
ALL = "all"  # --limit all: every training image, whatever the profile says


def _epilog(backbones: dict, debian_dir: Path, debian_package: str) -> str:
    return f"""
profiles (explicit flags override them):
{chr(10).join(f"  {p.name:<14} {p.summary}" for p in PROFILES.values())}

data sets:
  fashion_mnist  the idx files of the Debian package {debian_package}
                 in {debian_dir} (--data-dir overrides); 10 classes,
                 28x28 grey; the 10,000 test images give the final accuracy, 10% of the
                 training images (at most 5,000) validate
  folder         --data-dir DIR holding DIR/<class>/*.jpg|png (10% of each class held out
                 for validation) or DIR/train/<class>/... with DIR/val/<class>/... (and
                 optionally DIR/test/<class>/... for the final accuracy, else val is used);
                 streamed from disk; small_cnn takes them as 64x64 RGB

backbones:
{chr(10).join(f"  {b.name:<16} {b.summary}" for b in backbones.values())}
  Transfer backbones carry their own preprocessing in the model and train in two phases: the new
  head on the frozen base (--epochs, --learning-rate), then the top --fine-tune-layers of the base
  as well (--fine-tune-epochs at --fine-tune-learning-rate). --weights imagenet needs the Keras
  download (or the file in ~/.keras/models/); offline, pass --weights PATH to the .h5 file.

output:
  <models-dir>/<model-name>/<version>/  a SavedModel (next free version number), written
      atomically, readable by every user, with signatures serving_default (uint8 images) and
      image_bytes (encoded JPEG/PNG), outputs scores, classes, ood_score and ood_threshold (the
      out-of-distribution score and its threshold, calibrated on the validation images), and
      TF Serving warm-up requests
  <report-dir>/  report.md, report.json, curves.png, confusion.png, coverage.png, model.weights.h5
"""


def _positive(convert, kind: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind}, got {text!r}")
        return value
    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


def _count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _limit(text: str) -> int | str:
    if text == ALL:
        return ALL
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None


def _model_name(text: str) -> str:
    if not MODEL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be letters, digits, '.', '_' or '-', got {text!r}")
    return text


def _by_profile(field: str) -> str:
    values = ", ".join(f"{p.name} {getattr(p, field) or ALL}" for p in PROFILES.values())
    return f"default by profile: {values}"


def build_parser() -> argparse.ArgumentParser:
    # The registries import TensorFlow, so they are imported here rather than with the module.
    from training.backbones import BACKBONES
    from training.datasets import DATASETS
    from training.datasets.fashion_mnist import DEBIAN_DIR, DEBIAN_PACKAGE

    parser = argparse.ArgumentParser(
        prog="python -m training", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(BACKBONES, DEBIAN_DIR, DEBIAN_PACKAGE),
        description="Train an image classifier and export it as a versioned SavedModel for TF Serving, "
                    "with a training report.")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help=f"set of defaults for epochs, batch size, limit and schedule (default {DEFAULT_PROFILE})")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="fashion_mnist",
                        help="where the images come from (default fashion_mnist)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"data location (default for fashion_mnist: {DEBIAN_DIR}; required for folder)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="small_cnn",
                        help="model architecture (default small_cnn)")
    parser.add_argument("--weights", metavar="{imagenet,none,PATH}",
                        help="starting weights: a named pre-trained set (imagenet, for backbones that have "
                             "one), none (random), or a .weights.h5 file from an earlier report "
                             "(default: the backbone's own, none for small_cnn)")
    parser.add_argument("--image-size", type=_positive_int, metavar="N",
                        help="square input size in pixels instead of the backbone's own (224, 299 for "
                             "inception_v3; 64 for small_cnn on a folder); at least 32, 75 for inception_v3")
    parser.add_argument("--epochs", type=_positive_int, metavar="N",
                        help=f"passes over the training images ({_by_profile('epochs')})")
    parser.add_argument("--batch-size", type=_positive_int, metavar="N",
                        help=f"images per training step ({_by_profile('batch_size')})")
    parser.add_argument("--limit", type=_limit, metavar="N",
                        help=f"use only N training images, validation slice included, or 'all' "
                             f"({_by_profile('limit')})")
    parser.add_argument("--learning-rate", type=_positive_float, metavar="LR",
                        help=f"peak learning rate of the one-cycle schedule, AdamW ({_by_profile('learning_rate')})")
    parser.add_argument("--fine-tune-epochs", type=_count, metavar="N",
                        help="transfer backbones: epochs of the second phase, with the top of the base "
                             "unfrozen; 0 skips it (default: as many as --epochs)")
    parser.add_argument("--fine-tune-layers", type=_count, metavar="N",
                        help="transfer backbones: how many top layers of the base the second phase trains, "
                             "batch norm excepted (default: mobilenet_v2 30, efficientnet_b0 30, vgg16 4, "
                             "inception_v3 60)")
    parser.add_argument("--fine-tune-learning-rate", type=_positive_float, metavar="LR",
                        help="peak learning rate of the second phase (default: --learning-rate / 100)")
    parser.add_argument("--patience", type=_count, default=3, metavar="N",
                        help="stop a phase after N epochs without a lower validation loss and keep its best "
                             "epoch's weights; 0 never stops early (default 3)")
    parser.add_argument("--class-weights", choices=("balanced", "none"), default="balanced",
                        help="balanced: weight the loss so every folder class counts equally however many "
                             "images it has (default balanced)")
    parser.add_argument("--compress", choices=("float16", "int8"), action="append", default=[],
                        help="also export a smaller variant as model NAME-float16 or NAME-int8 (weights "
                             "stored as float16, or quantized to int8 per channel), with a size, accuracy "
                             "and latency comparison; may be repeated")
    parser.add_argument("--seed", type=int, default=42, metavar="N",
                        help="seed for the data split, shuffling, augmentation and initial weights (default 42)")
    parser.add_argument("--model-name", type=_model_name, default="fashion", metavar="NAME",
                        help="the model's name: exported to <models-dir>/NAME/ (default fashion)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                        help="model base directory, as served (default models)")
    parser.add_argument("--report-dir", type=Path, metavar="DIR",
                        help="where the training report goes (default "
                             "reports/training/<model-name>-v<version>-<timestamp>/)")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    """Merge the chosen profile's defaults with the flags that were given."""
    from training.pipeline import Options

    profile = PROFILES[args.profile]

    def pick(value, default):
        return default if value is None else value

    return Options(
        dataset=args.dataset, data_dir=args.data_dir, backbone=args.backbone, weights=args.weights,
        epochs=pick(args.epochs, profile.epochs), batch_size=pick(args.batch_size, profile.batch_size),
        limit=None if args.limit == ALL else pick(args.limit, profile.limit),
        seed=args.seed, learning_rate=pick(args.learning_rate, profile.learning_rate),
        warmup_fraction=profile.warmup_fraction, model_name=args.model_name, models_dir=args.models_dir,
        report_dir=args.report_dir, profile=profile.name, image_size=args.image_size,
        patience=args.patience or None, class_weights=args.class_weights,
        fine_tune_epochs=args.fine_tune_epochs, fine_tune_layers=args.fine_tune_layers,
        fine_tune_learning_rate=args.fine_tune_learning_rate, compress=tuple(dict.fromkeys(args.compress)))


def main(argv: list[str] | None = None) -> int:
    import_tensorflow_quietly()  # before anything imports it, so an error really is one line
    args = build_parser().parse_args(argv)
    from training import pipeline
    from training.errors import exit_code_of

    return exit_code_of(lambda: pipeline.run(options_from(args), echo=lambda line: print(line, flush=True)))
