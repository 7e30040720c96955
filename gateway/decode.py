"""Safe image decoding with Pillow: bytes in, the model's raw uint8 pixels out.

Decoding is CPU work on untrusted input, so it is fenced in:

* only the configured formats are even parsed (`Image.open(formats=...)`);
* the pixel count is checked from the header before any pixel is decoded, and Pillow's own
  decompression-bomb warning is an error (`install_pillow_guards`);
* large JPEGs are decoded at a reduced DCT scale (draft mode): a 12 MP photo bound for a 28x28
  model never exists at full size in memory;
* it runs in a small thread pool behind a bound (`Decoder`), off the event loop, and a full pool
  answers "overloaded" at once instead of queueing without limit.

What it produces: the first frame of an animated image (APNG, animated WebP), EXIF orientation
applied, transparency composited onto a background colour
(the model cannot see alpha, and what hides under transparent pixels is arbitrary), converted to
the model's channels (L for 1, RGB for 3), resized to the model's input size (bilinear, aspect
ratio not kept, as Keras' `image_dataset_from_directory` and `tf.image.resize` do), as
`height * width * channels` bytes in row-major HWC order: one row of the uint8 `images` tensor.
No numpy: the gateway stays lean.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageOps

from gateway.errors import InvalidImage, Overloaded

log = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # width and height swap after exif_transpose

# What Pillow raises for corrupt, truncated or hostile data (its parsers are not consistent).
_BAD_DATA_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
                    struct.error, ZeroDivisionError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Magic numbers, only to tell a client which format it sent when that format is not accepted.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"<svg", "SVG"), (b"<?xml", "SVG/XML"),
)


@dataclass(frozen=True)
class InputSpec:
    """The model's input image: what the decoder must produce."""

    height: int
    width: int
    channels: int  # 1 (grayscale) or 3 (RGB)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.channels not in (1, 3):
            raise ValueError(f"unsupported model input {self.height}x{self.width}x{self.channels}: "
                             "need fixed height/width and 1 or 3 channels")

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class DecodeLimits:
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    max_pixels: int = 25_000_000


def install_pillow_guards(max_pixels: int) -> None:
    """Make Pillow's own bomb check agree with ours and turn its warning into an error.

    Called once at start-up (process-wide state belongs to the process's owner, not to a decode).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:16].lstrip()
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits,
                 background: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """Decode `data` into `spec.nbytes` raw pixels, or raise InvalidImage with a useful message."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    allowed = ", ".join(limits.allowed_formats)
    try:
        img = Image.open(io.BytesIO(data), formats=list(limits.allowed_formats))
    except _BOMB_ERRORS:
        raise InvalidImage(f"the image has more than {limits.max_pixels} pixels") from None
    except _BAD_DATA_ERRORS:
        sniffed = sniff_format(data)
        if sniffed in limits.allowed_formats:
            raise InvalidImage(f"the {sniffed} image is corrupt or truncated") from None
        if sniffed is not None:
            raise InvalidImage(f"{sniffed} images are not accepted; send one of {allowed}") from None
        raise InvalidImage(f"not an image, or not one of the accepted formats ({allowed})") from None
    try:
        with img:
            return _to_pixels(img, spec, limits, background)
    except InvalidImage:
        raise
    except _BOMB_ERRORS:
        raise InvalidImage(f"the image has more than {limits.max_pixels} pixels") from None
    except _BAD_DATA_ERRORS as exc:
        log.debug("decode failed: %s: %s", type(exc).__name__, exc)
        raise InvalidImage(f"the {img.format} image is corrupt or truncated") from None


def _to_pixels(img: Image.Image, spec: InputSpec, limits: DecodeLimits,
               background: tuple[int, int, int]) -> bytes:
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidImage(f"the image is {width}x{height} pixels, more than the limit of {limits.max_pixels}")
    target = (spec.width, spec.height)
    if img.format == "JPEG":
        rotated = img.getexif().get(_EXIF_ORIENTATION) in _ROTATED_ORIENTATIONS
        img.draft(spec.mode, (spec.height, spec.width) if rotated else target)
    img = ImageOps.exif_transpose(img)
    img = _normalise_mode(img)
    if img.size != target:
        img = img.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if img.mode == "RGBA":
        backdrop = Image.new("RGBA", img.size, background + (255,))
        backdrop.alpha_composite(img)
        img = backdrop
    pixels = img.convert(spec.mode).tobytes()
    if len(pixels) != spec.nbytes:  # a bug, not bad input
        raise RuntimeError(f"decoder produced {len(pixels)} bytes, expected {spec.nbytes}")
    return pixels


def _normalise_mode(img: Image.Image) -> Image.Image:
    """L, RGB or RGBA: modes that resize well and convert exactly to the model's."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255; scale them instead.
        return img.convert("I").point(lambda v: v * (1 / 256), "L")
    if img.has_transparency_data:
        return img.convert("RGBA")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("RGB")


def parse_colour(name: str) -> tuple[int, int, int]:
    return ImageColor.getrgb(name)[:3]


class Decoder:
    """Runs `decode_image` in a bounded thread pool, off the event loop.

    At most `max_pending` images are decoding or waiting for a thread; one more is refused with
    Overloaded at once. A slot is freed when the decode really finishes (not when an impatient
    caller stops waiting), so the bound holds for the threads' actual work.
    """

    def __init__(self, workers: int, max_pending: int, limits: DecodeLimits):
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._slots = threading.BoundedSemaphore(max_pending)

    async def decode(self, data: bytes, spec: InputSpec,
                     background: tuple[int, int, int] = (0, 0, 0)) -> bytes:
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many images are waiting to be decoded; retry later")
        try:
            future = self._pool.submit(decode_image, data, spec, self.limits, background)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
