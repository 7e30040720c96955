"""Hostile and odd inputs for the hardening tests, every one generated here by code.

No binary of unknown origin: images are drawn with Pillow, headers that lie are packed with
`struct`, random bytes come from a seeded generator, so each case says what it is and can be rebuilt.

`hostile_cases()` lists what a client might send as an image: bytes, the content type a REST client
would give, and the expected outcome - `message` holds words the INVALID_ARGUMENT / 400 answer must
contain, or is None for an odd but decodable image, which must get a normal answer.
`MALFORMED_MULTIPART` lists broken multipart bodies (REST only). The `as_*` encoders turn a model
image (grey pixels) into the odd encodings, so tests can check the answer is the right one.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

SIDE = 28  # the default model's input: 28x28 grey


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    content_type: str
    message: str | None  # words of the INVALID_ARGUMENT message; None: decodable, answered normally

    @property
    def decodable(self) -> bool:
        return self.message is None


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def grey(pixels: bytes, side: int = SIDE) -> Image.Image:
    return Image.frombytes("L", (side, side), pixels)


def png(pixels: bytes, side: int = SIDE) -> bytes:
    """The plain encoding every odd one is compared with: an 8-bit grey PNG of the same pixels."""
    return encode(grey(pixels, side), "PNG")


# -- odd but decodable encodings of a model image ------------------------------------------------------

def as_sixteen_bit_png(pixels: bytes) -> bytes:
    """16-bit grey: each value v stored as v * 257 (so 255 -> 65535); decodes back to v exactly."""
    wide = Image.new("I;16", (SIDE, SIDE))
    wide.putdata([v * 257 for v in pixels])
    return encode(wide, "PNG")


def as_palette_png_with_alpha(pixels: bytes, transparent: int = 255) -> bytes:
    """A palette image (entry i is grey i) whose entry `transparent` is see-through: those pixels
    must come out as the background (black by default), all others unchanged."""
    img = Image.frombytes("P", (SIDE, SIDE), pixels)
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    return encode(img, "PNG", transparency=transparent)


def with_transparent_as_black(pixels: bytes, transparent: int = 255) -> bytes:
    return bytes(0 if v == transparent else v for v in pixels)


def as_cmyk_jpeg(pixels: bytes) -> bytes:
    return encode(grey(pixels).convert("RGB").convert("CMYK"), "JPEG", quality=100)


def as_exif_rotated(pixels: bytes, fmt: str = "JPEG", scale: int = 8) -> bytes:
    """The image stored on its side with EXIF orientation 6 ("rotate 90 degrees clockwise to
    display"), as a camera held upright writes it. Scaled up (nearest) so a JPEG decodes in draft mode."""
    upright = grey(pixels).resize((SIDE * scale, SIDE * scale), Image.Resampling.NEAREST)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # displaying = rotating it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    options = {"quality": 100} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif, **options)


def as_stored_sideways(pixels: bytes) -> bytes:
    """What a decoder that ignores EXIF would see in `as_exif_rotated`: the pixels on their side."""
    return png(grey(pixels).transpose(Image.Transpose.ROTATE_90).tobytes())


def as_animated(first: bytes, second: bytes, fmt: str) -> bytes:
    """Two frames (animated PNG or WebP, lossless): the gateway classifies the first."""
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(grey(first), fmt, save_all=True, append_images=[grey(second)], duration=100, loop=0, **options)


def one_by_one(value: int) -> bytes:
    return encode(Image.new("L", (1, 1), value), "PNG")


# -- headers that lie -----------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height grey pixels (a pixel bomb when large)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + _png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG with its frame header (SOF0) rewritten to claim width x height."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -- the catalogue -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def hostile_cases() -> tuple[Case, ...]:
    """Every hostile or odd image, built once per process."""
    noise = Image.effect_noise((64, 64), 60).convert("L")
    photo = noise.convert("RGB")
    middle = bytes(range(256)) * 3 + bytes(16)  # 784 grey values
    rng = random.Random(6)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="28" height="28"/></svg>'
    gif_frames = [Image.new("L", (16, 16), v) for v in (0, 255)]
    return (
        Case("random bytes", rng.randbytes(4096), "image/jpeg", "not an image"),
        Case("empty", b"", "image/png", "empty"),
        Case("text", b"hello, I am not a picture\n" * 4, "image/png", "not an image"),
        Case("truncated JPEG", encode(photo, "JPEG", quality=90)[:600], "image/jpeg", "corrupt or truncated"),
        Case("truncated PNG", encode(noise, "PNG")[:300], "image/png", "corrupt or truncated"),
        Case("truncated WebP", encode(photo, "WEBP")[:40], "image/webp", "corrupt or truncated"),
        Case("GIF", encode(noise, "GIF"), "image/gif", "GIF images are not accepted"),
        Case("animated GIF", encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
             "image/gif", "GIF images are not accepted"),
        Case("TIFF", encode(noise, "TIFF"), "image/tiff", "TIFF images are not accepted"),
        Case("BMP", encode(noise, "BMP"), "image/bmp", "BMP images are not accepted"),
        Case("SVG", svg, "image/svg+xml", "SVG images are not accepted"),
        Case("PDF", encode(photo, "PDF"), "application/octet-stream", "PDF images are not accepted"),
        Case("zero-size PNG", png_claiming(0, 10), "image/png", "corrupt or truncated"),
        Case("pixel bomb PNG 100k x 100k", png_claiming(100_000, 100_000), "image/png", "pixels"),
        Case("pixel bomb PNG just over the limit", png_claiming(6000, 5000), "image/png", "pixels"),
        Case("pixel bomb JPEG 65k x 65k", jpeg_claiming(65_000, 65_000), "image/jpeg", "pixels"),
        Case("1x1", one_by_one(200), "image/png", None),
        Case("CMYK JPEG", as_cmyk_jpeg(middle), "image/jpeg", None),
        Case("16-bit PNG", as_sixteen_bit_png(middle), "image/png", None),
        Case("palette PNG with alpha", as_palette_png_with_alpha(middle), "image/png", None),
        Case("EXIF-rotated JPEG", as_exif_rotated(middle), "image/jpeg", None),
        Case("animated PNG", as_animated(middle, middle[::-1], "PNG"), "image/png", None),
        Case("animated WebP", as_animated(middle, middle[::-1], "WEBP"), "image/webp", None),
    )


def case(name: str) -> Case:
    return next(c for c in hostile_cases() if c.name == name)


def multipart(parts: list[tuple[str, str]], boundary: str = "b0undary") -> bytes:
    """A multipart body from (headers, payload) text parts, CRLF line ends, closed properly."""
    body = "".join(f"--{boundary}\r\n{headers}\r\n\r\n{payload}\r\n" for headers, payload in parts)
    return (body + f"--{boundary}--\r\n").encode()


_IMAGE_PART = 'Content-Disposition: form-data; name="image"; filename="a.png"'
# (name, content type, body, words of the 400 message)
MALFORMED_MULTIPART: tuple[tuple[str, str, bytes, str], ...] = (
    ("no boundary", "multipart/form-data", multipart([(_IMAGE_PART, "x")]), "boundary"),
    ("not multipart at all", "multipart/form-data; boundary=b0undary", b"\x00\x01garbage" * 50, "multipart"),
    ("never closed", "multipart/form-data; boundary=b0undary",
     f"--b0undary\r\n{_IMAGE_PART}\r\n\r\nxyz".encode(), "image"),
    ("part without a name", "multipart/form-data; boundary=b0undary",
     multipart([('Content-Disposition: form-data; filename="a.png"', "x")]), "name"),
    ("part without headers", "multipart/form-data; boundary=b0undary", multipart([("", "x")]), "name"),
    ("image as a text field", "multipart/form-data; boundary=b0undary",
     multipart([('Content-Disposition: form-data; name="image"', "x")]), "image"),
    ("no image field", "multipart/form-data; boundary=b0undary",
     multipart([('Content-Disposition: form-data; name="photo"; filename="a.png"', "x")]), "image"),
    ("two files", "multipart/form-data; boundary=b0undary", multipart([(_IMAGE_PART, "x"), (_IMAGE_PART, "y")]),
     "several"),
    ("fields flood", "multipart/form-data; boundary=b0undary",
     multipart([(f'Content-Disposition: form-data; name="f{i}"', "v") for i in range(50)]), "fields"),
    ("not an image inside", "multipart/form-data; boundary=b0undary", multipart([(_IMAGE_PART, "garbage")]),
     "not an image"),
)
