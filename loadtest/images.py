"""The images load tests and benchmarks send: real test images plus a share of large photos.

Small images come from `examples/` (Fashion-MNIST PNGs: what the model was trained on). Photos
matter because decoding dominates the gateway's CPU cost for them: the pool takes the photos in
`examples/` and, unless one of them is camera-sized already, adds camera-sized JPEGs made in code
(`synthetic_photo`: gradients plus smooth noise, which compress like a picture rather than like a
flat colour), because that is what phones upload. Which is which is decided from the image header
(pixel count), not the file name.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageChops

from tools.stack import example_images

log = logging.getLogger(__name__)

LARGE_PIXELS = 100_000  # from about 320x320 up an image counts as a (large) photo
CAMERA_PIXELS = 2_000_000  # what a phone camera sends; added synthetically when examples/ has none
SYNTHETIC_CAMERA_SIZES = ((2592, 1944), (1920, 1080))  # 5 MP camera, full-HD frame
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class PoolImage:
    name: str
    data: bytes
    mime: str
    width: int
    height: int

    @property
    def large(self) -> bool:
        return self.width * self.height >= LARGE_PIXELS


def load_image(name: str, data: bytes) -> PoolImage:
    """Read the format and size from the header (no pixel decoding)."""
    with Image.open(io.BytesIO(data)) as img:
        mime = MIME_TYPES.get(img.format or "", "application/octet-stream")
        return PoolImage(name, data, mime, img.width, img.height)


def synthetic_photo(width: int, height: int, seed: int = 0, quality: int = 88) -> bytes:
    """A photo-like RGB JPEG of the given size: smooth gradients plus low-frequency noise."""
    rng = random.Random(seed)
    channels = []
    for _ in range(3):
        gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR)
        base = ImageChops.add(gradient, Image.radial_gradient("L"), scale=2.0)
        base = base.resize((width, height), Image.Resampling.BILINEAR)
        noise = Image.effect_noise((max(1, width // 4), max(1, height // 4)), 40)
        noise = noise.resize((width, height), Image.Resampling.BICUBIC)
        channels.append(ImageChops.add(base, noise, scale=1.6, offset=-40))
    buf = io.BytesIO()
    Image.merge("RGB", channels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def synthetic_small(seed: int, size: int = 28) -> bytes:
    """A small grey PNG, used only when `examples/` holds no small images at all."""
    buf = io.BytesIO()
    Image.effect_noise((size, size), 60 + seed).save(buf, "PNG")
    return buf.getvalue()


class ImagePool:
    """Small images and large photos; `pick` returns a large photo with probability `large_share`."""

    def __init__(self, small: Sequence[PoolImage], large: Sequence[PoolImage], large_share: float):
        if not small:
            raise ValueError("the image pool needs at least one small image")
        if not 0.0 <= large_share <= 1.0:
            raise ValueError(f"large_share must be within [0, 1], got {large_share}")
        if large_share > 0 and not large:
            raise ValueError("large_share > 0 but the pool has no large photos")
        self.small = list(small)
        self.large = list(large)
        self.large_share = large_share

    @classmethod
    def from_examples(cls, large_share: float, paths: Sequence[Path] | None = None) -> "ImagePool":
        """The images in `examples/` (or `paths`), completed by synthetic ones where a kind is missing."""
        images = [load_image(p.name, p.read_bytes()) for p in (example_images() if paths is None else paths)]
        small = [img for img in images if not img.large]
        large = [img for img in images if img.large]
        if not small:
            log.warning("no small example images found; using synthetic 28x28 noise images")
            small = [load_image(f"synthetic-{i}.png", synthetic_small(i)) for i in range(8)]
        if large_share > 0 and not any(img.width * img.height >= CAMERA_PIXELS for img in large):
            large += [load_image(f"synthetic-{w}x{h}.jpg", synthetic_photo(w, h, seed=i))
                      for i, (w, h) in enumerate(SYNTHETIC_CAMERA_SIZES)]
        return cls(small, large, large_share)

    def pick(self, rng: random.Random) -> PoolImage:
        if self.large and rng.random() < self.large_share:
            return rng.choice(self.large)
        return rng.choice(self.small)

    def pick_many(self, count: int, rng: random.Random, max_bytes: int) -> list[PoolImage]:
        """`count` images totalling at most about `max_bytes`: large photos give way to small ones."""
        chosen: list[PoolImage] = []
        total = 0
        for _ in range(count):
            img = self.pick(rng)
            if img.large and total + len(img.data) > max_bytes:
                img = rng.choice(self.small)
            chosen.append(img)
            total += len(img.data)
        return chosen

    def describe(self) -> str:
        def kinds(images: Sequence[PoolImage]) -> str:
            sizes = sorted({f"{i.width}x{i.height}" for i in images})
            shown = ", ".join(sizes[:4]) + (", ..." if len(sizes) > 4 else "")
            return f"{len(images)} ({shown}; {sum(len(i.data) for i in images) // len(images):,} B avg)"
        large = kinds(self.large) if self.large else "none"
        return (f"small images: {kinds(self.small)}; large photos: {large}; "
                f"share of large photos: {self.large_share:.0%}")
