"""Safe image decoding for the gateway: bytes in, the model's raw uint8 pixels out.

The decoding itself (formats, pixel limits, draft mode for every JPEG-family file, the budget for
formats whose Pillow decoder is slow, EXIF orientation, alpha, resize) is
`imgclass_client.imaging`, a Pillow-only module of the client library (clients/python), so that a
client that shrinks a photo before sending it (`shrink=True`) runs the very same code and the
gateway decodes its PNG to the same pixels. This module adds what belongs to the server:

* `decode_image` raises the gateway's InvalidImage (400 / INVALID_ARGUMENT) for every failure of
  the input, whichever Pillow plugin raised what (NotImplementedError from a DDS variant
  included), with a plain message;
* `install_pillow_guards`: Pillow's own bomb check agrees with ours and its warning is an error;
* `Decoder` runs decodes in a small thread pool behind a bound, off the event loop (a full pool
  answers "overloaded" at once instead of queueing without limit), and hands the memory of large
  decodes back to the operating system after a burst (`release_memory`), so resident memory
  returns near idle instead of staying at its peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager, Iterator

from imgclass_client.imaging import (Colour, DecodeLimits, ImageDecodeError, InputSpec, model_image, open_image,
                                     sniff_format, to_pixels)
from PIL import Image, ImageColor

from gateway.errors import InvalidImage, Overloaded

__all__ = ["DecodeLimits", "Decoder", "InputSpec", "decode_image", "install_pillow_guards", "parse_colour",
           "release_memory", "sniff_format"]

log = logging.getLogger(__name__)

# A decode of a source image at least this large (width x height as stored; draft mode may
# decode less) counts as large: when the last large decode in flight ends, memory is released.
LARGE_DECODE_PIXELS = 2_000_000


def install_pillow_guards(max_pixels: int) -> None:
    """Make Pillow's own bomb check agree with ours and turn its warning into an error.

    Called once at start-up (process-wide state belongs to the process's owner, not to a decode).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits,
                 background: Colour = (0, 0, 0)) -> bytes:
    """Decode `data` into `spec.nbytes` raw pixels, or raise InvalidImage with a useful message."""
    return _decode(data, spec, limits, background, lambda _: contextlib.nullcontext())


def _decode(data: bytes, spec: InputSpec, limits: DecodeLimits, background: Colour,
            around: Callable[[int], ContextManager]) -> bytes:
    """decode_image, the pixel work wrapped in `around(source pixel count)`."""
    try:
        with open_image(data, limits) as img, around(img.width * img.height):
            return to_pixels(model_image(img, spec, limits), spec, background)
    except ImageDecodeError as exc:
        raise InvalidImage(str(exc)) from None


def parse_colour(name: str) -> Colour:
    return ImageColor.getrgb(name)[:3]


def _malloc_trim():
    """glibc's malloc_trim, or None (another C library): returns free heap memory to the system."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Give the C allocator's free memory back to the operating system (glibc's malloc_trim).

    Large decodes leave glibc's per-thread arenas big: without this, resident memory stays near
    its peak after a burst of photos. A no-op returning False where the C library has no
    malloc_trim."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class Decoder:
    """Runs `decode_image` in a bounded thread pool, off the event loop.

    At most `max_pending` images are decoding or waiting for a thread; one more is refused with
    Overloaded at once. A slot is freed when the decode really finishes (not when an impatient
    caller stops waiting), so the bound holds for the threads' actual work. When the last large
    decode in flight (source of `LARGE_DECODE_PIXELS` or more) ends, its thread releases the
    allocator's free memory (`release_memory`, a few milliseconds), so a burst of photos does
    not leave resident memory at its peak.
    """

    def __init__(self, workers: int, max_pending: int, limits: DecodeLimits):
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._large = 0  # large decodes in flight
        self.releases = 0  # times memory was released (for tests and the bench)

    async def decode(self, data: bytes, spec: InputSpec, background: Colour = (0, 0, 0)) -> bytes:
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many images are waiting to be decoded; retry later")
        try:
            future = self._pool.submit(self._run, data, spec, background)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def _run(self, data: bytes, spec: InputSpec, background: Colour) -> bytes:
        return _decode(data, spec, self.limits, background, self._large_decode)

    @contextlib.contextmanager
    def _large_decode(self, pixels: int) -> Iterator[None]:
        """Counts large decodes in flight; the last one to end releases the allocator's memory."""
        if pixels < LARGE_DECODE_PIXELS:
            yield
            return
        with self._lock:
            self._large += 1
        try:
            yield
        finally:
            with self._lock:
                self._large -= 1
                last = self._large == 0
            if last and release_memory():
                self.releases += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
