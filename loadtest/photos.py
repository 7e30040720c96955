"""Photo-like images made offline: what phones upload, for the bench's real-photo series and the
tests of client-side shrinking.

`camera_photo` is a 12 MP JPEG (4032x3024, quality 90, about 4 MB): one of scikit-image's bundled
sample photos, scaled up, with sensor-like grain so that it compresses like a camera's picture
(a smooth upscaled image would be a fraction of the size and decode faster than a real photo).
`sample_photos` are scikit-image's photos themselves as JPEGs. Without scikit-image and numpy
(they are in the `ml` extra), the photos are loadtest/images.py's synthetic gradients.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image

from loadtest.images import synthetic_photo

CAMERA_SIZE = (4032, 3024)  # 12 MP, a phone's main camera
VGA_SIZE = (640, 480)
SAMPLES = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field")  # colour photos in skimage.data


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _sample(name: str) -> Image.Image | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Image.fromarray(getattr(skimage.data, name)())


@lru_cache(maxsize=4)
def camera_photo(size: tuple[int, int] = CAMERA_SIZE, sample: str = "coffee", quality: int = 90,
                 grain: float = 10.0, seed: int = 0) -> bytes:
    """A camera-sized photo-like JPEG (about 4 MB at 12 MP); a few seconds to make, cached."""
    base = _sample(sample)
    try:
        import numpy as np
    except ImportError:
        np = None
    if base is None or np is None:
        return synthetic_photo(*size, seed=seed, quality=quality)
    width, height = size
    pixels = np.asarray(base.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    rng = np.random.default_rng(seed)
    # Grain: luma noise at half resolution (demosaicing spreads it) plus a little per-pixel colour noise.
    luma = rng.normal(0, grain, size=((height + 1) // 2, (width + 1) // 2, 1)).repeat(2, 0).repeat(2, 1)
    noisy = pixels + luma[:height, :width] + rng.normal(0, grain / 2, pixels.shape)
    return _jpeg(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), quality)


def vga_photo(sample: str = "coffee", quality: int = 90) -> bytes:
    """A 640x480 JPEG of a sample photo (synthetic without scikit-image)."""
    base = _sample(sample)
    if base is None:
        return synthetic_photo(*VGA_SIZE, quality=quality)
    return _jpeg(base.convert("RGB").resize(VGA_SIZE, Image.Resampling.BICUBIC), quality)


def sample_photos(quality: int = 90) -> dict[str, bytes]:
    """scikit-image's bundled colour photos as JPEGs, by name (empty without scikit-image)."""
    out = {}
    for name in SAMPLES:
        img = _sample(name)
        if img is not None:
            out[f"{name}.jpg"] = _jpeg(img.convert("RGB"), quality)
    return out
