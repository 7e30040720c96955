"""Image folders: `DIR/<class>/*.jpg|png`, or already split as `DIR/train|val[/test]/<class>/...`.

Only file names are listed up front; the pixels are read and decoded inside the `tf.data` pipeline
(with the same `decode_to_input` the exported `image_bytes` signature uses), so a folder far larger
than memory streams through. Class names are the sorted folder names.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from training.augment import Augmentation
from training.datasets.common import DataSplits, seeded_permutation, val_count_for
from training.errors import TrainingError
from training.imaging import InputSpec, decode_to_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# How JPEG and PNG files begin: checked while listing, so a stray non-image is reported by name
# instead of failing deep inside TensorFlow's decoder halfway through an epoch.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
VAL_DIR_NAMES = ("val", "validation")
LAYOUT_HINT = "expected DIR/<class>/*.jpg|png or DIR/train/<class>/... with DIR/val/<class>/..."

Files = list[tuple[str, int]]  # (path, class index)


def _check_is_image(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if not head.startswith(IMAGE_MAGIC):
        raise TrainingError(f"{path} is not a JPEG or PNG image")
    return str(path)


def _class_files(split_dir: Path) -> dict[str, list[str]]:
    """Class name -> its image files (sorted), for every sub-folder holding at least one image."""
    classes = {}
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(_check_is_image(f) for f in sub.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[sub.name] = files
    return classes


def _indexed(classes: dict[str, list[str]], labels: list[str], where: Path) -> Files:
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise TrainingError(f"{where} has classes the training split lacks: {', '.join(unknown)}")
    return [(f, labels.index(name)) for name, files in classes.items() for f in files]


def _stratified_split(classes: dict[str, list[str]], labels: list[str], seed: int) -> tuple[Files, Files]:
    """Hold out the validation share of every class (one image at least, when it has two)."""
    train, val = [], []
    for index, name in enumerate(labels):
        files = classes[name]
        shuffled = [files[i] for i in seeded_permutation(len(files), seed + index)]
        n_val = val_count_for(len(files)) if len(files) > 1 else 0
        val += [(f, index) for f in shuffled[:n_val]]
        train += [(f, index) for f in shuffled[n_val:]]
    return train, val


class ImageFolder:
    """The `folder` data source."""

    # small_cnn on a folder: colour, big enough for simple photos, small enough for a CPU.
    natural_spec = InputSpec(64, 64, 3)
    augmentation = Augmentation(flip_horizontal=True, max_shift=0.08, fill="REFLECT")
    default_dir: Path | None = None

    def load(self, data_dir: Path, spec: InputSpec, *, limit: int | None, seed: int) -> DataSplits:
        if not data_dir.is_dir():
            raise TrainingError(f"--data-dir {data_dir} is not a directory")
        train_dir = data_dir / "train"
        pre_split = train_dir.is_dir()
        classes = _class_files(train_dir if pre_split else data_dir)
        if len(classes) < 2:
            found = f" (found only {', '.join(classes)})" if classes else ""
            raise TrainingError(f"{data_dir} needs at least two class folders with images{found}; {LAYOUT_HINT}")
        labels = sorted(classes)

        test_name = "val"
        val_dir = next((data_dir / n for n in VAL_DIR_NAMES if (data_dir / n).is_dir()), None)
        if pre_split and val_dir is not None:
            train = _indexed(classes, labels, train_dir)
            val = _indexed(_class_files(val_dir), labels, val_dir)
        else:
            train, val = _stratified_split(classes, labels, seed)
        if not val:
            raise TrainingError(f"{data_dir} has too few images to hold any out for validation; {LAYOUT_HINT}")
        test = val
        if (data_dir / "test").is_dir():
            test, test_name = _indexed(_class_files(data_dir / "test"), labels, data_dir / "test"), "test"

        train = [train[i] for i in seeded_permutation(len(train), seed)]
        if limit is not None:
            train = train[:limit]

        def pipeline(files: Files, shuffle: bool = False) -> tf.data.Dataset:
            paths, indices = zip(*files)
            ds = tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(indices, tf.int32)))
            if shuffle:  # paths, not pixels: the buffer stays tiny however big the folder
                ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
            return ds.map(lambda path, y: (decode_to_input(tf.io.read_file(path), spec), y),
                          num_parallel_calls=tf.data.AUTOTUNE)

        return DataSplits(
            labels=labels,
            train=pipeline(train, shuffle=True),
            val=pipeline(val),
            test=pipeline(test),
            train_count=len(train),
            val_count=len(val),
            test_count=len(test),
            test_name=test_name,
            description=f"image folder {data_dir}",
            train_class_counts=[sum(1 for _, index in train if index == i) for i in range(len(labels))],
        )
