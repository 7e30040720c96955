"""Regenerate the bundled example images from the Fashion-MNIST test set (provenance: README.md).

    .venv/bin/python examples/generate.py [--data-dir /usr/share/datasets/fashion-mnist]

* examples/fashion/<class>.png: a Fashion-MNIST test image exactly as stored (28x28 grey).
* examples/photos/<class>-640x480.jpg: a test image composed onto a 640x480 colour "photo"
  (dark, unevenly lit, noisy backdrop, warm tint, JPEG), so the decode -> grey -> resize path of
  the gateway and of the `image_bytes` signature is exercised on something camera-sized. The item
  fills the frame in proportion (stretched to 4:3) because the serving resize does not keep the
  aspect ratio, just as training data is never letter-boxed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets.fashion_mnist import DEBIAN_DIR, FILES, LABELS
from training.datasets.idx import read_idx

HERE = Path(__file__).resolve().parent
# Classes shown; each is represented by its first image in the test set.
PNG_CLASSES = ["T-shirt/top", "Trouser", "Dress", "Coat", "Sandal", "Sneaker", "Bag", "Ankle boot"]
PHOTO_CLASSES = ["Sneaker", "Bag"]
PHOTO_SIZE = (640, 480)


def slug(label: str) -> str:
    return label.lower().replace("/", "-").replace(" ", "-")


def first_of_each_class(labels: np.ndarray) -> dict[str, int]:
    return {LABELS[c]: int(np.argmax(labels == c)) for c in range(len(LABELS))}


def compose_photo(item: np.ndarray, seed: int) -> Image.Image:
    """The grey 28x28 item, enlarged smoothly onto a dark, slightly noisy, warm-tinted 640x480 backdrop."""
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width]
    # Dim on purpose: Fashion-MNIST backgrounds are pure black, and the model misreads items on
    # a brighter backdrop (at 12-38 grey levels, 4 of 10 classes go wrong; at 4-18, 2 of 10). Its
    # out-of-distribution guard is stricter still: at 4-18 levels with more noise and a blur, both
    # photos scored over its threshold ("not sure"); at 1-5 levels with a little noise, under it.
    backdrop = 1 + 4 * (x / width) * (1 - y / height) + rng.normal(0, 1, (height, width))
    enlarged = Image.fromarray(item).resize((int(width * 0.95), int(height * 0.95)), Image.Resampling.BICUBIC)
    enlarged = np.asarray(enlarged, dtype=float)
    canvas = backdrop.copy()
    top, left = (height - enlarged.shape[0]) // 2, (width - enlarged.shape[1]) // 2
    region = canvas[top:top + enlarged.shape[0], left:left + enlarged.shape[1]]
    np.maximum(region, enlarged + rng.normal(0, 1, enlarged.shape), out=region)
    grey = np.clip(canvas, 0, 255)
    rgb = np.stack([grey * 1.0, grey * 0.93, grey * 0.82], axis=-1)  # a warm light
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_DIR)
    args = parser.parse_args()
    images = read_idx(args.data_dir / f"{FILES['test_images']}.gz")
    labels = read_idx(args.data_dir / f"{FILES['test_labels']}.gz")
    index = first_of_each_class(labels)
    (HERE / "fashion").mkdir(exist_ok=True)
    (HERE / "photos").mkdir(exist_ok=True)
    for label in PNG_CLASSES:
        Image.fromarray(images[index[label]]).save(HERE / "fashion" / f"{slug(label)}.png")
    for seed, label in enumerate(PHOTO_CLASSES):
        compose_photo(images[index[label]], seed).save(HERE / "photos" / f"{slug(label)}-640x480.jpg", quality=90)
    for i in sorted(index.values()):
        print(f"test image {i}: {LABELS[labels[i]]}")


if __name__ == "__main__":
    main()
