"""Safe image decoding for the gateway: bytes in, the model's raw uint8 pixels out.

The decoding itself (formats, pixel limits, draft mode for every JPEG-family file, the budget for
formats whose Pillow decoder is slow, EXIF orientation, alpha, resize) is
`imgclass_client.imaging`, a Pillow-only module of the client library (clients/python), so that a
client that shrinks a photo before sending it (`shrink=True`) runs the very same code and the
gateway decodes its PNG to the same pixels. This module adds what belongs to the server:

* `decode_image` raises the gateway's InvalidImage (400 / INVALID_ARGUMENT) for every failure of
  the input, whichever Pillow plugin raised what (NotImplementedError from a DDS variant
  included), with a plain message;
* `install_pillow_guards` (once, at start-up): Pillow's own bomb check agrees with ours and its
  warning is an error; glibc's malloc arenas are capped (`limit_malloc_arenas`), so memory that
  large decodes used in several threads can go back to the system;
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
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager, Iterator

from imgclass_client.imaging import (Colour, DecodeLimits, ImageDecodeError, InputSpec, model_image, open_image,
                                     to_pixels)
from PIL import Image, ImageColor

from gateway.errors import InvalidImage, Overloaded

__all__ = ["DecodeLimits", "Decoder", "InputSpec", "decode_image", "install_pillow_guards", "limit_malloc_arenas",
           "parse_colour", "release_memory"]

log = logging.getLogger(__name__)

MALLOC_ARENAS = 2  # see limit_malloc_arenas
_M_ARENA_MAX = -8  # glibc's malloc.h

# Once this many source pixels (width x height as stored; draft mode may decode less) were
# decoded since memory was last released, it is released again RELEASE_DELAY_SECONDS later, in
# a decode thread: after the requests of a burst have ended, so their bodies are freed too. A
# release costs a few milliseconds after a burst of photos, microseconds when there is little.
RELEASE_AFTER_PIXELS = 1_000_000
RELEASE_DELAY_SECONDS = 0.5


def install_pillow_guards(max_pixels: int) -> None:
    """The decoder's process-wide settings: Pillow's own bomb check agrees with ours and its
    warning is an error; glibc's malloc keeps at most `MALLOC_ARENAS` arenas (`limit_malloc_arenas`).

    Called once at start-up (process-wide state belongs to the process's owner, not to a decode).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    limit_malloc_arenas()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (mallopt M_ARENA_MAX), unless MALLOC_ARENA_MAX is set in the
    environment; False where the C library has no mallopt or refused.

    glibc gives threads arenas of their own (up to 8 per core); after large decodes in several
    threads each stays big, and malloc_trim does not shrink them far: the gateway stayed at twice
    its idle memory after bursts of Pillow's test images, and came back to idle with 2 arenas.
    """
    if "MALLOC_ARENA_MAX" in os.environ or _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    return _LIBC.mallopt(_M_ARENA_MAX, arenas) == 1


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


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc: returns free heap memory to the system
if _TRIM is not None:
    _TRIM.argtypes, _TRIM.restype = [ctypes.c_size_t], ctypes.c_int


def release_memory() -> bool:
    """Give the C allocator's free memory back to the operating system (glibc's malloc_trim).

    Large decodes leave glibc's per-thread arenas big: without this, resident memory stays near
    its peak after a burst of photos. A no-op returning False where the C library has no
    malloc_trim."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


# Small images (at most this many bytes, and pixels once the header is read) decode in tens of
# microseconds: less than a hand-off to a thread and back costs. The core queues them undecoded and
# decodes them with their batch (`decode_many`): on the event loop itself while the batch's source
# pixels stay within INLINE_BATCH_PIXELS (dozens of thumbnails, a few of the largest small ones: a
# pause of about a millisecond), the rest in one pool task per thread. Pixel bounds are checked from
# the header, before any pixel is decoded.
INLINE_MAX_BYTES = 16 * 1024
INLINE_MAX_PIXELS = 128 * 128
INLINE_BATCH_PIXELS = 4 * INLINE_MAX_PIXELS


def is_small(data: bytes) -> bool:
    return len(data) <= INLINE_MAX_BYTES


class Decoder:
    """Runs `decode_image` in a bounded thread pool, off the event loop (small images inline).

    At most `max_pending` images are decoding or waiting for a thread; one more is refused with
    Overloaded at once. A slot is freed when the decode really finishes (not when an impatient
    caller stops waiting), so the bound holds for the threads' actual work. Once
    `RELEASE_AFTER_PIXELS` source pixels were decoded since the last release, the allocator's free
    memory is released (`release_memory`) `RELEASE_DELAY_SECONDS` later, at most that often, so a
    burst of photos does not leave resident memory at its peak.
    """

    def __init__(self, workers: int, max_pending: int, limits: DecodeLimits):
        self.limits = limits
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pixels = 0  # source pixels decoded since memory was last released
        self._release: asyncio.TimerHandle | None = None  # a release is scheduled
        self.releases = 0  # times memory was released (for tests)

    async def decode_many(self, images: list[tuple[bytes, InputSpec, Colour]]) -> list[bytes | InvalidImage]:
        """Small images (is_small), each decoded or its InvalidImage, in order: here, on the loop,
        while their source pixels stay within INLINE_BATCH_PIXELS; the others in one pool task per
        decode thread, so a batch costs a few hand-offs at most, not one per image."""
        out: list[bytes | InvalidImage | None] = [None] * len(images)
        budget = INLINE_BATCH_PIXELS
        for i, (data, spec, background) in enumerate(images):
            if budget < 1:
                break
            try:
                inline = self._inline(data, spec, background, max_pixels=min(INLINE_MAX_PIXELS, budget))
            except InvalidImage as exc:
                out[i] = exc
                continue
            if inline is not None:
                out[i], used = inline
                budget -= used
        left = [i for i, result in enumerate(out) if result is None]
        if left:
            loop = asyncio.get_running_loop()
            workers = max(1, min(self._workers, len(left)))
            chunks = [left[k::workers] for k in range(workers)]
            done = await asyncio.gather(*(loop.run_in_executor(
                self._pool, self._decode_chunk, [images[i] for i in chunk]) for chunk in chunks))
            for chunk, results in zip(chunks, done):
                for i, result in zip(chunk, results):
                    out[i] = result
        return out  # type: ignore[return-value]  # every None was filled

    def _decode_chunk(self, images: list[tuple[bytes, InputSpec, Colour]]) -> list[bytes | InvalidImage]:
        out: list[bytes | InvalidImage] = []
        for data, spec, background in images:
            try:
                out.append(_decode(data, spec, self.limits, background, self._tracked))
            except InvalidImage as exc:
                out.append(exc)
        return out

    async def decode(self, data: bytes, spec: InputSpec, background: Colour = (0, 0, 0)) -> bytes:
        if is_small(data):
            inline = self._inline(data, spec, background)
            if inline is not None:
                return inline[0]
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many images are waiting to be decoded; retry later")
        try:
            future = self._pool.submit(self._run, data, spec, background)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wrap_future(future)
        finally:
            if self._pixels >= RELEASE_AFTER_PIXELS and self._release is None:
                self._release = asyncio.get_running_loop().call_later(RELEASE_DELAY_SECONDS, self._release_soon)

    def _inline(self, data: bytes, spec: InputSpec, background: Colour,
                max_pixels: int = INLINE_MAX_PIXELS) -> tuple[bytes, int] | None:
        """The pixels of a small image, decoded here, and its source pixel count; None when its
        header says it has more than `max_pixels`."""
        try:
            with open_image(data, self.limits) as img:
                size = img.width * img.height
                if size > max_pixels:
                    return None
                return to_pixels(model_image(img, spec, self.limits), spec, background), size
        except ImageDecodeError as exc:
            raise InvalidImage(str(exc)) from None

    def _release_soon(self) -> None:
        self._release = None
        with self._lock:
            self._pixels = 0
        try:
            self._pool.submit(self._release_now)
        except RuntimeError:  # the pool was shut down
            pass

    def _release_now(self) -> None:
        if release_memory():
            self.releases += 1

    def _run(self, data: bytes, spec: InputSpec, background: Colour) -> bytes:
        return _decode(data, spec, self.limits, background, self._tracked)

    @contextlib.contextmanager
    def _tracked(self, pixels: int) -> Iterator[None]:
        """Counts the source pixels decoded."""
        try:
            yield
        finally:
            with self._lock:
                self._pixels += pixels

    def close(self) -> None:
        if self._release is not None:
            self._release.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
