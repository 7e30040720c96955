"""An out-of-distribution evaluation set made offline: images that show none of a model's classes.

Nothing is downloaded. The material is

* `photo`: real photographs shipped inside installed packages — scikit-image's bundled sample
  images (a cat, a coffee cup, coins, an astronaut, a camera man, a rocket, a motorcycle, the moon,
  grass, gravel, bricks, …) and matplotlib's portrait of Grace Hopper, each file as it is shipped;
* `face`: the 200 small crops of scikit-image's LFW subset (100 faces, 100 other scene patches);
* `crop`: random crops of the photos, mirrored or rotated, resized to camera-like and thumbnail
  sizes and re-encoded as JPEG or PNG;
* `drawing`: a horse silhouette, a logo and a gift-box clip art shipped with the same packages;
* `texture`: generated noise, clouds, gradients, stripes, checkerboards, flat colours;
* `scene`: generated cartoon scenes (sky, ground, sun, houses, trees), the kind of picture a
  CIFAR-style data set holds.

Every image is encoded bytes, as a user would upload it, and reaches a model through
`gateway.decode.decode_image` — Pillow with draft mode and a bilinear resize, the exact pixels the
gateway would send. `build(seed)` is deterministic for a seed. Raises OodSetError when the packages
holding the photos are not installed (scikit-image is in the `ml` extra of pyproject.toml).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gateway.decode import DecodeLimits, InputSpec as DecodeSpec, decode_image

GROUPS = ("photo", "face", "crop", "drawing", "texture", "scene")

# (package, file, what it shows): photographs only; scikit-image's drawn test patterns
# (chessboard, phantom, logo, colour wheel) are textures at best and are left out.
PHOTOS = (
    ("skimage.data", "astronaut.png", "portrait of an astronaut"),
    ("skimage.data", "camera.png", "man with a camera on a tripod"),
    ("skimage.data", "chelsea.png", "cat"),
    ("skimage.data", "coffee.png", "cup of coffee"),
    ("skimage.data", "coins.png", "coins"),
    ("skimage.data", "rocket.jpg", "rocket on the launch pad"),
    ("skimage.data", "motorcycle_left.png", "motorcycle"),
    ("skimage.data", "hubble_deep_field.jpg", "galaxies"),
    ("skimage.data", "moon.png", "surface of the moon"),
    ("skimage.data", "grass.png", "grass"),
    ("skimage.data", "gravel.png", "gravel"),
    ("skimage.data", "brick.png", "brick wall"),
    ("skimage.data", "clock_motion.png", "clock, motion-blurred"),
    ("skimage.data", "page.png", "page of a book"),
    ("skimage.data", "text.png", "hand-written text"),
    ("skimage.data", "retina.jpg", "retina"),
    ("skimage.data", "ihc.png", "stained tissue (microscope)"),
    ("skimage.data", "cell.png", "cell (microscope)"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "portrait of Grace Hopper"),
)
# Drawings shipped beside them: not photographs, still nothing a clothing model knows.
DRAWINGS = (
    ("skimage.data", "horse.png", "horse silhouette"),
    ("skimage.data", "logo.png", "the scikit-image logo"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png", "gift box clip art"),
)
LFW_FILE = ("skimage.data", "lfw_subset.npy")
CROPS_PER_PHOTO = 6
TEXTURES = 60
SCENES = 60


class OodSetError(Exception):
    """The packages that ship the photographs are missing or do not hold the expected files."""


@dataclass(frozen=True)
class OodImage:
    name: str
    group: str  # one of GROUPS
    data: bytes  # encoded JPEG or PNG


def _package_file(package: str, name: str) -> Path:
    try:
        path = Path(str(resources.files(package) / name))
    except ModuleNotFoundError:
        raise OodSetError(f"the out-of-distribution set needs the {package.split('.')[0]} package "
                          f"(scikit-image: pip install the `ml` extra)") from None
    if not path.is_file():
        raise OodSetError(f"{package} has no {name}: another version than the one pinned in pyproject.toml?")
    return path


def _encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def photos() -> list[OodImage]:
    """The shipped photographs, byte for byte."""
    return [OodImage(f"photo/{Path(name).stem}", "photo", _package_file(package, name).read_bytes())
            for package, name, _ in PHOTOS]


def drawings() -> list[OodImage]:
    return [OodImage(f"drawing/{Path(name).stem}", "drawing", _package_file(package, name).read_bytes())
            for package, name, _ in DRAWINGS]


def faces() -> list[OodImage]:
    crops = np.load(_package_file(*LFW_FILE))
    return [OodImage(f"face/{i:03d}", "face",
                     _encode(Image.fromarray(np.round(crop * 255).astype(np.uint8), "L"), "PNG"))
            for i, crop in enumerate(crops)]


def crops(originals: list[OodImage], rng: np.random.Generator) -> list[OodImage]:
    out = []
    for item in originals:
        with Image.open(io.BytesIO(item.data)) as opened:
            source = opened.convert("RGB")
        width, height = source.size
        for k in range(CROPS_PER_PHOTO):
            area = rng.uniform(0.2, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = int(min(width, max(8, np.sqrt(area * width * height * aspect))))
            h = int(min(height, max(8, np.sqrt(area * width * height / aspect))))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            image = source.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            image = image.rotate(int(rng.choice([0, 0, 90, 180, 270])), expand=True)
            side = int(rng.choice([48, 96, 224, 480, 800]))
            image = image.resize((side, max(8, round(side * image.height / image.width))), Image.Resampling.BILINEAR)
            fmt = "JPEG" if rng.random() < 0.7 else "PNG"
            out.append(OodImage(f"crop/{item.name.split('/')[-1]}-{k}", "crop",
                                _encode(image, fmt, int(rng.integers(70, 96)))))
    return out


def _texture(kind: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "noise":
        pixels = rng.integers(0, 256, (size, size, 3))
    elif kind == "clouds":
        noise = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        blurred = np.asarray(noise.filter(ImageFilter.GaussianBlur(rng.uniform(2, 8))), float)
        pixels = (blurred - blurred.min()) / max(np.ptp(blurred), 1) * 255
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x + np.sin(angle) * y
        pixels = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6) * rng.uniform(80, 255) + rng.uniform(0, 60)
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.03, 0.25)
        pixels = 127.5 + 127.5 * np.sign(np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period))
    elif kind == "checker":
        cells = int(rng.integers(2, 16))
        pixels = ((np.floor(x * cells) + np.floor(y * cells)) % 2) * 255
    else:  # flat
        pixels = np.full((size, size, 3), rng.integers(30, 256, 3))
    pixels = np.asarray(pixels, float)
    if pixels.ndim == 2:
        tint = rng.uniform(0.5, 1.0, 3)
        pixels = pixels[..., np.newaxis] * tint
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def textures(rng: np.random.Generator) -> list[OodImage]:
    kinds = ("noise", "clouds", "gradient", "stripes", "checker", "flat")
    return [OodImage(f"texture/{kinds[i % len(kinds)]}-{i}", "texture",
                     _encode(_texture(kinds[i % len(kinds)], rng), "PNG" if i % 2 else "JPEG"))
            for i in range(TEXTURES)]


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, 3))


def _scene(rng: np.random.Generator, width: int = 160, height: int = 120) -> Image.Image:
    """Sky, horizon and ground, a sun, then houses, trees or balls: a child's drawing of a photo."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(rng.integers(height // 3, 3 * height // 4))
    sky, ground = _colour(rng, 90, 256), _colour(rng, 20, 200)
    for row in range(height):  # the sky lightens towards the horizon
        shade = 0.7 + 0.3 * min(row / max(horizon, 1), 1.0)
        draw.line([(0, row), (width, row)], fill=tuple(int(c * shade) for c in (sky if row < horizon else ground)))
    if rng.random() < 0.6:
        r, cx, cy = int(rng.integers(6, 18)), int(rng.integers(0, width)), int(rng.integers(0, horizon))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, 200, 256))
    for _ in range(int(rng.integers(1, 5))):
        kind, cx = rng.choice(["house", "tree", "ball"]), int(rng.integers(0, width))
        size = int(rng.integers(12, 40))
        if kind == "house":
            draw.rectangle([cx, horizon - size, cx + size, horizon], fill=_colour(rng))
            draw.polygon([(cx - 4, horizon - size), (cx + size + 4, horizon - size), (cx + size // 2, horizon - 2 * size)],
                         fill=_colour(rng))
        elif kind == "tree":
            draw.rectangle([cx, horizon - size, cx + size // 6 + 2, horizon], fill=_colour(rng, 40, 120))
            draw.ellipse([cx - size // 2, horizon - 2 * size, cx + size // 2, horizon - size // 2], fill=_colour(rng, 0, 160))
        else:
            cy = int(rng.integers(horizon, height))
            draw.ellipse([cx, cy - size, cx + size, cy], fill=_colour(rng))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    noise = rng.normal(0, rng.uniform(0, 8), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, float) + noise, 0, 255).astype(np.uint8), "RGB")


def scenes(rng: np.random.Generator) -> list[OodImage]:
    return [OodImage(f"scene/{i}", "scene", _encode(_scene(rng), "JPEG" if i % 2 else "PNG", 90))
            for i in range(SCENES)]


def build(seed: int = 0) -> list[OodImage]:
    """The whole set, in GROUPS order; the same images for the same seed."""
    rng = np.random.default_rng(seed)
    originals = photos()
    return [*originals, *faces(), *crops(originals, rng), *drawings(), *textures(rng), *scenes(rng)]


def to_pixels(images: list[OodImage], height: int, width: int, channels: int) -> np.ndarray:
    """uint8 `[n, height, width, channels]`: what the gateway's decoder makes of each image."""
    spec, limits = DecodeSpec(height, width, channels), DecodeLimits()
    return np.stack([np.frombuffer(decode_image(item.data, spec, limits), np.uint8).reshape(height, width, channels)
                     for item in images])


def groups(images: list[OodImage]) -> Iterator[tuple[str, np.ndarray]]:
    """(group, boolean mask over `images`) for each group present."""
    names = np.array([item.group for item in images])
    for group in GROUPS:
        mask = names == group
        if mask.any():
            yield group, mask
