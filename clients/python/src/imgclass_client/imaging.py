"""Encoded image -> the model's input pixels, with Pillow: the gateway's decoder, and the client's shrink.

One implementation for both ends. The gateway (gateway/decode.py) decodes every upload with
`decode_image`; a client that shrinks a photo before sending it (`shrink_image`) runs the same
steps up to the last one and sends their result as a lossless PNG of exactly the model's input
size, which `decode_image` turns into the very pixels it would have made of the original (same
Pillow version). Only Pillow is needed (the client's `shrink` extra), nothing of the gateway.

The steps, on untrusted input:

* only the allowed formats are parsed (`Image.open(formats=...)`), and the pixel count is checked
  from the header before any pixel is decoded (`DecodeLimits.max_pixels`);
* every JPEG-family file (JPEG, and MPO: a JPEG with more frames, as Fujifilm and phone cameras
  write) is decoded at a reduced DCT scale (draft mode): a 12 MP photo bound for a 28x28 model
  never exists at full size in memory;
* formats whose Pillow decoder is written in Python (uncompressed DDS, BLP, QOI, plain PPM, XPM,
  16-bit SGI, MSP, BMP RLE, gzip FITS: about 1-2 microseconds of CPU per pixel, where the C
  decoders take a few nanoseconds) are held to a per-image budget of
  `DecodeLimits.slow_decoder_max_pixels` (512x512, about half a second of CPU) and refused above it;
* the first frame of an animated or multi-frame image, EXIF orientation applied, converted to L,
  RGB or RGBA (16-bit greys scaled, not clipped), resized to the model's input size (bilinear,
  aspect ratio not kept, as Keras' `image_dataset_from_directory` and `tf.image.resize` do);
* transparency composited onto a background colour (the model cannot see alpha, and what hides
  under transparent pixels is arbitrary), converted to the model's channels (L for 1, RGB for 3):
  `height * width * channels` bytes in row-major HWC order, one row of the uint8 `images` tensor.

Every failure of the input, whichever Pillow plugin raised what, is an ImageDecodeError whose
message names the problem in plain words (never a traceback); anything else raised here is a bug.
No numpy: the gateway stays lean.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Tuple

from PIL import Image, ImageOps, JpegImagePlugin

log = logging.getLogger(__name__)

Colour = Tuple[int, int, int]

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # width and height swap after exif_transpose
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# What Pillow raises for corrupt, truncated or hostile data (its parsers are not consistent).
_BAD_DATA_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
                    struct.error, ZeroDivisionError, NotImplementedError, RuntimeError, MemoryError,
                    OverflowError, AttributeError, AssertionError)

# Magic numbers, only to tell a client which format it sent when that format is not accepted.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"DDS ", "DDS"), (b"<svg", "SVG"), (b"<?xml", "SVG/XML"),
)


class ImageDecodeError(ValueError):
    """The data is not an image this decoder accepts; the message says why, for the sender."""


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

    @classmethod
    def parse(cls, text: str) -> "InputSpec":
        """"28x28x1" (height x width x channels, as GET /v1/fleet shows it) -> InputSpec."""
        try:
            height, width, channels = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"expected HEIGHTxWIDTHxCHANNELS such as 28x28x1, got {text!r}") from None
        return cls(height, width, channels)

    @property
    def text(self) -> str:
        """"28x28x1": the form parse() reads."""
        return f"{self.height}x{self.width}x{self.channels}"

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"


@dataclass(frozen=True)
class DecodeLimits:
    """What the decoder accepts (the gateway's defaults; its settings can widen or narrow them)."""

    allowed_formats: Tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    max_pixels: int = 25_000_000
    slow_decoder_max_pixels: int = 512 * 512


def sniff_format(data: bytes) -> str | None:
    """The format the first bytes announce (for messages only; Pillow decides what the data is)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:16].lstrip()
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Pillow's lazy image for `data` (header read, no pixels decoded yet); raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    allowed = ", ".join(limits.allowed_formats)
    try:
        return Image.open(io.BytesIO(data), formats=list(limits.allowed_formats))
    except _BOMB_ERRORS:
        raise ImageDecodeError(f"the image has more than {limits.max_pixels} pixels") from None
    except _BAD_DATA_ERRORS as exc:
        sniffed = sniff_format(data)
        if sniffed in limits.allowed_formats:
            if isinstance(exc, NotImplementedError):
                raise ImageDecodeError(f"this kind of {sniffed} image is not supported: {exc}") from None
            raise ImageDecodeError(f"the {sniffed} image is corrupt or truncated") from None
        if sniffed is not None:
            raise ImageDecodeError(f"{sniffed} images are not accepted; send one of {allowed}") from None
        raise ImageDecodeError(f"not an image, or not one of the accepted formats ({allowed})") from None


def model_image(img: Image.Image, spec: InputSpec, limits: DecodeLimits) -> Image.Image:
    """The opened image at the model's input size, before its last step: mode L or RGB, or RGBA
    when it has transparency (composited by `to_pixels`). Raises ImageDecodeError."""
    try:
        return _model_image(img, spec, limits)
    except ImageDecodeError:
        raise
    except _BOMB_ERRORS:
        raise ImageDecodeError(f"the image has more than {limits.max_pixels} pixels") from None
    except _BAD_DATA_ERRORS as exc:
        log.debug("decode failed: %s: %s", type(exc).__name__, exc)
        if isinstance(exc, NotImplementedError):
            raise ImageDecodeError(f"this kind of {img.format} image is not supported: {exc}") from None
        if isinstance(exc, MemoryError):
            raise ImageDecodeError(f"the {img.format} image needs more memory to decode than it may use") from None
        raise ImageDecodeError(f"the {img.format} image is corrupt or truncated") from None


def to_pixels(img: Image.Image, spec: InputSpec, background: Colour = (0, 0, 0)) -> bytes:
    """The last step: an image of `model_image`'s kind (or a PNG of it, decoded) -> the model's
    uint8 HWC bytes, transparency composited onto `background`."""
    if img.mode == "RGBA":
        backdrop = Image.new("RGBA", img.size, background + (255,))
        backdrop.alpha_composite(img)
        img = backdrop
    pixels = (img if img.mode == spec.mode else img.convert(spec.mode)).tobytes()  # convert() copies
    if len(pixels) != spec.nbytes:  # a bug, not bad input
        raise RuntimeError(f"decoder produced {len(pixels)} bytes, expected {spec.nbytes}")
    return pixels


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits = DecodeLimits(),
                 background: Colour = (0, 0, 0)) -> bytes:
    """Decode `data` into `spec.nbytes` raw pixels, or raise ImageDecodeError with a useful message."""
    with open_image(data, limits) as img:
        return to_pixels(model_image(img, spec, limits), spec, background)


def shrink_image(data: bytes, spec: InputSpec, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """A lossless PNG of `model_image(data)`: exactly the model's input size, which `decode_image`
    turns into the same pixels as `data` itself (for every background colour: transparency is
    kept and composited by the decoder). Raises ImageDecodeError as `decode_image` does."""
    with open_image(data, limits) as img:
        small = model_image(img, spec, limits)
        if small.mode not in ("RGBA", spec.mode):
            small = small.convert(spec.mode)
        buf = io.BytesIO()
        small.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _model_image(img: Image.Image, spec: InputSpec, limits: DecodeLimits) -> Image.Image:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageDecodeError(f"the image is {width}x{height} pixels, more than the limit of {limits.max_pixels}")
    if width * height > limits.slow_decoder_max_pixels and _slow_decoder(img):
        raise ImageDecodeError(f"{img.format} images of this kind decode slowly and may have at most "
                               f"{limits.slow_decoder_max_pixels} pixels; this one is {width}x{height}")
    target = (spec.width, spec.height)
    if isinstance(img, JpegImagePlugin.JpegImageFile):  # JPEG and MPO
        rotated = img.getexif().get(_EXIF_ORIENTATION) in _ROTATED_ORIENTATIONS
        img.draft(spec.mode, (spec.height, spec.width) if rotated else target)
    ImageOps.exif_transpose(img, in_place=True)  # not a copy when there is nothing to turn
    img = _normalise_mode(img)
    if img.size != target:
        img = img.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return img


def _slow_decoder(img: Image.Image) -> bool:
    """True when Pillow decodes this image in Python (a decoder registered with register_decoder)."""
    return any(tile[0] in Image.DECODERS for tile in getattr(img, "tile", ()) or ())


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
