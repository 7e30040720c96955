"""imgclass-client's `shrink`: photos decoded and shrunk in the caller by the gateway's own decoder.

The shrunk PNG must decode, in the gateway, to the very pixels the gateway makes of the original
(checked in-process on imgclass_client.imaging, the one decoder both use), so the answers are the
same: checked over the wire against the session's real gateway, on photos (12 MP, 640x480 and
scikit-image's sample photos), over gRPC and REST (`shrink=True`: the input size read from
ListModels or GET /v1/fleet; or given as `shrink_to`).
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from helpers import metric
from imgclass_client import (AsyncClassifierClient, ClassifierClient, InvalidImage, ModelInfo, NotFound,
                             RestClassifierClient)
from imgclass_client._wire import model_input, shrink
from imgclass_client.imaging import DecodeLimits, InputSpec, decode_image, shrink_image
from loadtest import photos
from tools import stack

GREY28 = InputSpec(28, 28, 1)
MAX_SCORE_DELTA = 1e-6


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def camera() -> bytes:
    return photos.camera_photo()


@pytest.fixture(scope="module")
def real_photos(camera) -> dict[str, bytes]:
    examples = {p.name: p.read_bytes() for p in stack.example_images() if p.parent.name == "photos"}
    return {"camera-12mp.jpg": camera, "vga.jpg": photos.vga_photo(), **examples, **photos.sample_photos()}


def tricky_images() -> dict[str, bytes]:
    """Every branch of the decoder: EXIF rotation, alpha, 16-bit grey, palette, MPO."""
    base = Image.effect_noise((300, 200), 60).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    half_clear = Image.new("RGBA", (120, 90), (250, 20, 20, 255))
    half_clear.paste((20, 20, 250, 0), (0, 0, 60, 90))
    return {
        "rotated.jpg": encode(base, "JPEG", exif=exif, quality=92),
        "alpha.png": encode(half_clear, "PNG"),
        "grey-alpha.png": encode(Image.new("LA", (64, 64), (120, 100)), "PNG"),
        "grey16.png": encode(Image.new("I;16", (50, 50), 40000), "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "camera.mpo": encode(base.resize((2400, 1600)), "MPO", save_all=True, append_images=[base], quality=90),
        "lossless.webp": encode(base, "WEBP", lossless=True),
    }


@pytest.mark.parametrize("spec", [GREY28, InputSpec(32, 24, 3)], ids=str)
def test_the_shrunk_png_decodes_to_the_pixels_of_the_original(spec, camera):
    images = {**tricky_images(), "camera-12mp.jpg": camera}
    for name, data in images.items():
        small = shrink_image(data, spec)
        with Image.open(io.BytesIO(small)) as img:
            assert img.format == "PNG" and img.size == (spec.width, spec.height), name
        for background in ((0, 0, 0), (255, 255, 255)):  # transparency is kept: any gateway background fits
            assert decode_image(small, spec, DecodeLimits(), background) == \
                decode_image(data, spec, DecodeLimits(), background), f"{name} on {background}"


def test_what_the_decoder_refuses_is_sent_as_it_is():
    garbage = b"definitely not an image"
    gif = encode(Image.new("RGB", (400, 400)), "GIF")  # not an accepted format by default
    tiny = encode(Image.new("L", (28, 28), 7), "PNG")   # smaller than any re-encoding
    assert shrink(garbage, GREY28) == garbage
    assert shrink(gif, GREY28) == gif
    assert len(shrink(tiny, GREY28)) <= len(tiny)


def scores(answer) -> dict[str, float]:
    return {p.label: p.score for p in answer.predictions}


def assert_same_answer(full, small, name: str) -> None:
    assert (small.label, small.confident, small.model_version) == (full.label, full.confident, full.model_version), name
    delta = max(abs(scores(full)[label] - score) for label, score in scores(small).items())
    assert delta <= MAX_SCORE_DELTA, f"{name}: scores differ by {delta}"


def test_scores_equal_the_full_upload_on_real_photos(gateway, real_photos):
    with ClassifierClient(gateway.grpc_target) as grpc_client, RestClassifierClient(gateway.http_url) as rest:
        for name, data in real_photos.items():
            full = grpc_client.classify(data, top_k=10)
            assert_same_answer(full, grpc_client.classify(data, top_k=10, shrink=True), f"gRPC {name}")
            assert_same_answer(full, grpc_client.classify(data, top_k=10, shrink_to=(28, 28, 1)), f"gRPC {name} (given)")
            assert_same_answer(full, rest.classify(data, top_k=10, shrink=True), f"REST {name}")
        results = rest.classify_many(real_photos.values(), top_k=10, shrink=True)
        batch = grpc_client.classify_batch(real_photos.values(), top_k=10, shrink_to="28x28x1")
        for name, one, other in zip(real_photos, results, batch):
            assert_same_answer(one.unwrap(), other.unwrap(), f"batch {name}")
    camera = real_photos["camera-12mp.jpg"]
    assert len(shrink(camera, GREY28)) * 1000 < len(camera)  # about 4 MB -> under 1 KB


def test_asyncio_client_shrinks_too_and_errors_stay_the_gateways(gateway, real_photos):
    data = real_photos["vga.jpg"]

    async def scenario():
        async with AsyncClassifierClient(gateway.grpc_target) as client:
            full = await client.classify(data, top_k=10)
            small = await client.classify(data, top_k=10, shrink=True)
            with pytest.raises(InvalidImage) as shrunk_error:
                await client.classify(b"not an image", shrink_to=(28, 28, 1))
            with pytest.raises(NotFound):  # a model the gateway does not front: its own error, unshrunk
                await client.classify(data, model="no-such-model", shrink=True)
            with pytest.raises(InvalidImage) as plain_error:
                await client.classify(b"not an image")
            return full, small, shrunk_error.value, plain_error.value

    full, small, shrunk_error, plain_error = asyncio.run(scenario())
    assert_same_answer(full, small, "asyncio")
    assert (shrunk_error.reason, shrunk_error.message) == (plain_error.reason, plain_error.message)


def test_shrink_over_grpc_learns_the_input_size_once_and_a_bad_shrink_to_is_refused(gateway, real_photos):
    def list_models_calls() -> float:
        return metric(gateway.http_url, "gateway_requests_total", route="ListModels")

    before = list_models_calls()
    with ClassifierClient(gateway.grpc_target) as client:
        for _ in range(3):
            client.classify(real_photos["vga.jpg"], shrink=True)
        assert list_models_calls() == before + 1  # asked once, kept for the next calls
        with pytest.raises(NotFound):
            client.classify(real_photos["vga.jpg"], model="no-such-model", shrink=True)
        with pytest.raises(ValueError, match="HEIGHTxWIDTHxCHANNELS"):
            client.classify(b"x", shrink_to="28x28")


def test_a_gateway_that_does_not_say_the_input_size_needs_shrink_to():
    older = [ModelInfo("fashion", 1, (), "AVAILABLE")]  # what model_info makes of a ModelInfo without `input`
    with pytest.raises(ValueError, match=r"shrink_to=\(height, width, channels\)"):
        model_input(older, "")
    assert model_input([ModelInfo("fashion", 0, (), "LOADING")], "fashion") is None  # its own error will say
    assert model_input([ModelInfo("fashion", 1, (), "AVAILABLE", "28x28x1")], "") == InputSpec(28, 28, 1)
