"""Image decoding (gateway/decode.py): formats, limits, orientation, channels, size.

decode.py is Pillow only (no wire protos), so it runs in-process. Images are generated here by
code. Hostile inputs in depth are tests/test_hardening_*.py's and Pillow's own test images are
tests/gateway/test_decode_corpus.py's; these pin the behaviour the data path relies on.
"""

from __future__ import annotations

import asyncio
import io
import struct

import pytest
from PIL import Image

from imgclass_client import imaging

from gateway import decode
from gateway.decode import DecodeLimits, Decoder, InputSpec, decode_image, install_pillow_guards
from gateway.errors import InvalidImage, Overloaded

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

GREY28 = InputSpec(28, 28, 1)
RGB8 = InputSpec(8, 8, 3)
LIMITS = DecodeLimits()


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def test_a_model_sized_grey_png_passes_through_unchanged():
    img = Image.effect_noise((28, 28), 80).convert("L")
    assert decode_image(encode(img, "PNG"), GREY28, LIMITS) == img.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_to_the_model_size_and_channels(fmt):
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    grey = decode_image(encode(img, fmt, **options), GREY28, LIMITS)
    assert len(grey) == 28 * 28
    assert abs(grey[0] - 84) <= 3          # luma of (200, 30, 30): 200*.299 + 30*.587 + 30*.114
    rgb = decode_image(encode(img, "PNG"), RGB8, LIMITS)
    assert len(rgb) == 8 * 8 * 3 and tuple(rgb[:3]) == (200, 30, 30)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"definitely not an image", "not an image"),
    (encode(Image.new("RGB", (9, 9)), "GIF"), "GIF images are not accepted"),
    (encode(Image.new("RGB", (9, 9)), "BMP"), "BMP images are not accepted"),
    (encode(Image.new("RGB", (9, 9)), "TIFF"), "TIFF images are not accepted"),
    (encode(Image.effect_noise((200, 200), 60).convert("RGB"), "JPEG")[:400], "corrupt or truncated"),
    (encode(Image.effect_noise((200, 200), 60), "PNG")[:300], "corrupt or truncated"),
])
def test_bad_input_is_an_invalid_image_with_a_useful_message(data, message):
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, GREY28, LIMITS)


def test_formats_outside_the_allowed_list_are_refused():
    png = encode(Image.new("L", (4, 4)), "PNG")
    with pytest.raises(InvalidImage, match="PNG images are not accepted"):
        decode_image(png, GREY28, DecodeLimits(allowed_formats=("JPEG",)))


def test_pixel_bombs_are_refused_before_decoding():
    # A 5000x5000 white PNG compresses to a few KB; the header alone gives it away.
    bomb = encode(Image.new("L", (5000, 5000), 255), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidImage, match="limit of 1000000"):
        decode_image(bomb, GREY28, DecodeLimits(max_pixels=1_000_000))


def test_pillows_own_bomb_warning_is_an_error_after_the_guards_are_installed():
    original = Image.MAX_IMAGE_PIXELS
    try:
        install_pillow_guards(1_000_000)
        with pytest.raises(InvalidImage, match="more than"):
            decode_image(encode(Image.new("L", (1500, 1000)), "PNG"), GREY28, DecodeLimits(max_pixels=10**9))
    finally:
        Image.MAX_IMAGE_PIXELS = original


def test_exif_orientation_is_applied():
    # Left half black, right half white; EXIF orientation 6 says "rotate 90 degrees clockwise to
    # display", after which the top is black and the bottom white.
    img = Image.new("L", (40, 40), 0)
    img.paste(255, (20, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_image(encode(img, "JPEG", exif=exif, quality=95), InputSpec(2, 2, 1), LIMITS)
    top_left, top_right, bottom_left, bottom_right = pixels
    assert top_left < 60 and top_right < 60 and bottom_left > 200 and bottom_right > 200


def test_big_jpegs_use_draft_mode_and_still_decode_right():
    img = Image.new("RGB", (4000, 3000), (10, 200, 10))
    pixels = decode_image(encode(img, "JPEG", quality=90), GREY28, LIMITS)
    assert len(pixels) == 784 and abs(pixels[400] - 126) <= 4   # luma of (10, 200, 10)


def test_mpo_files_are_drafted_like_jpegs():
    # MPO (Fujifilm and phone cameras): a JPEG with more frames. Pillow opens it as MpoImageFile.
    frames = [Image.new("RGB", (2400, 1800), (10, 200, 10)), Image.new("RGB", (2400, 1800), (200, 10, 10))]
    mpo = encode(frames[0], "MPO", save_all=True, append_images=frames[1:], quality=90)
    with imaging.open_image(mpo, LIMITS) as img:
        assert img.format == "MPO"
        imaging.model_image(img, GREY28, LIMITS)
        assert img.size == (300, 225)  # decoded at 1/8 scale, never at full size
    pixels = decode_image(mpo, GREY28, LIMITS)
    assert len(pixels) == 784 and abs(pixels[400] - 126) <= 4   # the first frame's luma


def test_every_decoder_failure_is_an_invalid_image():
    # A DDS whose pixel format flags Pillow does not implement: NotImplementedError at open.
    dds = bytearray(encode(Image.new("RGB", (8, 8)), "DDS"))
    dds[80:84] = struct.pack("<I", 8)
    limits = DecodeLimits(allowed_formats=("DDS",))
    with pytest.raises(InvalidImage, match="this kind of DDS image is not supported"):
        decode_image(bytes(dds), GREY28, limits)


def test_formats_with_slow_decoders_have_a_pixel_budget():
    # Uncompressed DDS is decoded by Python code in Pillow (about a microsecond per pixel).
    limits = DecodeLimits(allowed_formats=("DDS",), slow_decoder_max_pixels=100 * 100)
    assert len(decode_image(encode(Image.new("RGB", (100, 100)), "DDS"), GREY28, limits)) == 784
    with pytest.raises(InvalidImage, match="decode slowly and may have at most 10000 pixels; this one is 101x100"):
        decode_image(encode(Image.new("RGB", (101, 100)), "DDS"), GREY28, limits)
    # The C decoders (PNG here) are not held to it.
    assert len(decode_image(encode(Image.new("RGB", (300, 300)), "PNG"), GREY28,
                            DecodeLimits(slow_decoder_max_pixels=100))) == 784



def test_transparency_is_composited_onto_the_background():
    clear = Image.new("RGBA", (8, 8), (255, 255, 255, 0))   # white, but fully transparent
    assert set(decode_image(encode(clear, "PNG"), RGB8, LIMITS)) == {0}
    assert set(decode_image(encode(clear, "PNG"), RGB8, LIMITS, background=(255, 255, 255))) == {255}
    opaque = Image.new("LA", (8, 8), (120, 255))
    assert set(decode_image(encode(opaque, "PNG"), InputSpec(8, 8, 1), LIMITS)) == {120}


def test_sixteen_bit_greys_are_scaled_not_clipped():
    img = Image.new("I;16", (28, 28), 40000)
    assert set(decode_image(encode(img, "PNG"), GREY28, LIMITS)) == {40000 // 256}


def test_the_decoder_releases_memory_after_a_burst_of_pixels(monkeypatch):
    monkeypatch.setattr(decode, "RELEASE_DELAY_SECONDS", 0.5)  # the burst (three decodes) ends well within it

    async def scenario():
        decoder = Decoder(workers=2, max_pending=4, limits=LIMITS)
        photo = encode(Image.new("RGB", (1000, 1000), (10, 200, 10)), "JPEG", quality=90)
        try:
            await decoder.decode(encode(Image.new("L", (28, 28)), "PNG"), GREY28)
            assert decoder._release is None  # a few pixels are not worth a release
            await asyncio.gather(*(decoder.decode(photo, GREY28) for _ in range(3)))
            await wait_until_async(lambda: decoder.releases == 1)  # one for the burst, after it
            assert decoder._release is None and decoder._pixels == 0
        finally:
            decoder.close()

    if not decode.release_memory():
        pytest.skip("this C library has no malloc_trim")
    asyncio.run(scenario())


async def wait_until_async(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_the_decoder_pool_refuses_work_beyond_its_bound():
    async def scenario():
        decoder = Decoder(workers=1, max_pending=2, limits=LIMITS)
        big = encode(Image.effect_noise((2000, 2000), 50), "PNG")
        try:
            first = asyncio.ensure_future(decoder.decode(big, GREY28))
            second = asyncio.ensure_future(decoder.decode(big, GREY28))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await decoder.decode(big, GREY28)
            assert len(await first) == len(await second) == 784
            assert len(await decoder.decode(big, GREY28)) == 784  # slots come back
        finally:
            decoder.close()

    asyncio.run(scenario())


def test_a_batch_of_small_images_decodes_on_the_loop_within_its_pixel_budget_the_rest_in_the_pool():
    black = (0, 0, 0)
    thumbs = [(encode(Image.new("L", (28, 28), v), "PNG"), GREY28, black) for v in range(40)]  # 40 x 784 pixels
    broken = (b"\x89PNG\r\n\x1a\n not really", GREY28, black)
    larger = [(encode(Image.new("L", (128, 128), v), "PNG"), GREY28, black) for v in (50, 60, 70, 80, 90)]

    async def scenario():
        decoder = Decoder(workers=2, max_pending=4, limits=LIMITS)
        try:
            batch = thumbs[:20] + [broken] + thumbs[20:]
            want = [decode_image(data, spec, LIMITS) for data, spec, _ in thumbs]
            got = await decoder.decode_many(batch)
            assert isinstance(got[20], InvalidImage) and got[:20] + got[21:] == want
            mixed = await decoder.decode_many(thumbs[:2] + larger)  # over the budget: the last two in the pool
            assert [set(pixels) for pixels in mixed[2:]] == [{50}, {60}, {70}, {80}, {90}]
            decoder.close()  # no pool any more: a batch within the budget never needed it
            assert await decoder.decode_many(thumbs) == want
            with pytest.raises(RuntimeError):
                await decoder.decode_many(larger)
        finally:
            decoder.close()

    assert sum(128 * 128 for _ in larger) > decode.INLINE_BATCH_PIXELS >= 40 * 28 * 28
    asyncio.run(scenario())
