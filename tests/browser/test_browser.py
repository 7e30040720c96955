"""The web page at `GET /`, in a real browser against the real stack.

Headless Debian Chromium (/usr/bin/chromium; `.ci/run` installs it when root) is driven by
Playwright for Python; Playwright's own browser downloads are never used. The page talks
to the session's gateway (conftest `gateway`, in front of a real model server), and every answer it
shows is checked against the REST API's answer for the same bytes, fetched here with httpx.

Screenshots go to pytest's temporary directory (the page here serves the session's quickly trained
model); `python -m tools.screenshot` refreshes the README's picture from the committed model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from loadtest.photos import camera_photo
from tools import stack
from tools.screenshot import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1100, "height": 820}
ANSWER_TIMEOUT_MS = 30_000  # the first answer may wait for a cold model


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser tests need Debian's chromium "
                    "(`apt-get install chromium`; .ci/run does it when run as root)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, gateway):
    """Opens the gateway's page in a fresh browser context; fails the test on any script error."""
    expect.set_options(timeout=ANSWER_TIMEOUT_MS)
    contexts, script_errors = [], []

    def open_(viewport: dict = DESKTOP, url: str | None = None):
        context = browser.new_context(viewport=viewport, color_scheme="light")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))
        response = page.goto(f"{url or gateway.http_url}/")
        assert response is not None and response.ok, f"GET / answered {response and response.status}"
        # The model list is the page's first call: once the header says something, it is wired up.
        expect(page.locator("#service-status")).not_to_have_attribute("data-state", "loading")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not script_errors, f"the page raised script errors: {script_errors}"


@pytest.fixture(scope="module")
def two_model_gateway(model_server):
    """A second gateway fronting the session's model and one the model server does not have."""
    env = {**os.environ, "GATEWAY_MODELS": json.dumps({"fashion": {}, "absent": {}})}
    gw = stack.start_gateway(backend=model_server.grpc_target, env=env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def example_image() -> Path:
    """A bundled Fashion-MNIST example, as a user would pick it."""
    images = [p for p in stack.example_images() if p.parent.name == "fashion"]
    if not images:
        pytest.fail(f"no example images under {stack.EXAMPLES_DIR / 'fashion'}")
    return images[0]


def rest_classify(gateway, name: str, data: bytes, mime: str, top_k: int,
                  model: str | None = None) -> httpx.Response:
    """The REST answer for the same upload the page makes (multipart field `image`)."""
    path = f"/v1/models/{model}:classify" if model else "/v1/classify"
    return httpx.post(f"{gateway.http_url}{path}", params={"top_k": top_k},
                      files={"image": (name, data, mime)}, timeout=30)


def wait_for_answer(page, panel: str = "#outcome") -> None:
    """Waits until the page has finished a request and shows `panel` (#outcome or #problem)."""
    expect(page.locator("#result-card")).to_have_attribute("aria-busy", "false")
    expect(page.locator(panel)).to_be_visible()


def shown_outcome(page) -> dict:
    """What the page shows for a successful answer, read from the DOM."""
    rows = page.locator("#bars > li")
    bars = []
    for i in range(rows.count()):
        row = rows.nth(i)
        fill = row.locator(".bar-fill").bounding_box()
        track = row.locator(".bar-track").bounding_box()
        bars.append({
            "label": row.locator(".bar-label").inner_text(),
            "score": float(row.get_attribute("data-score")),
            "value": row.locator(".bar-value").inner_text(),
            "fill_ratio": fill["width"] / track["width"],
        })
    return {
        # The DOM text: CSS capitalises an uncertain label's first letter on screen.
        "label": page.locator("#decision-label").text_content(),
        "confident": page.locator("#decision").get_attribute("data-confident") == "true",
        "model": page.locator("#meta-model").inner_text(),
        "latency": page.locator("#meta-latency").inner_text(),
        "announced": page.locator("#announcer").inner_text(),
        "bars": bars,
    }


def assert_matches_rest(shown: dict, answer: dict) -> None:
    assert shown["label"] == answer["label"]
    assert shown["confident"] is answer["confident"]
    assert shown["model"] == f"{answer['model']} v{answer['model_version']}"
    assert [b["label"] for b in shown["bars"]] == [p["label"] for p in answer["predictions"]]
    for bar, prediction in zip(shown["bars"], answer["predictions"]):
        # Two separate requests may be batched differently: equal up to float32 noise.
        assert bar["score"] == pytest.approx(prediction["score"], abs=1e-5)
        assert bar["value"] == f"{bar['score'] * 100:.1f}%"
        # The bar is drawn as long as its score says (a 2 px minimum keeps tiny scores visible).
        assert bar["fill_ratio"] == pytest.approx(bar["score"], abs=0.02)
    assert answer["label"] in shown["announced"], "the aria-live region did not announce the answer"


def save_screenshot(page, tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    page.screenshot(path=path, full_page=True)
    return path


def test_uploaded_example_shows_the_rest_answer(open_page, gateway, example_image, tmp_path):
    page = open_page()
    top_k = int(page.locator("#top-k").input_value())
    with page.expect_response(lambda r: "classify" in r.url) as answered:
        page.set_input_files("#file", example_image)

    wait_for_answer(page)
    shown = shown_outcome(page)
    # The server's own timing (Server-Timing header) is shown beside the round trip.
    assert answered.value.headers.get("server-timing"), "the gateway sent no Server-Timing header"
    expect(page.locator("#meta-server")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    rest = rest_classify(gateway, example_image.name, example_image.read_bytes(), "image/png", top_k)
    assert rest.status_code == 200, rest.text
    assert_matches_rest(shown, rest.json())
    assert len(shown["bars"]) == top_k
    assert re.fullmatch(r"\d+ ms", shown["latency"])
    expect(page.locator("#preview")).to_be_visible()
    save_screenshot(page, tmp_path)


def test_changing_top_k_asks_again(open_page, gateway, example_image):
    page = open_page()
    page.set_input_files("#file", example_image)
    wait_for_answer(page)
    page.select_option("#top-k", "3")
    expect(page.locator("#bars > li")).to_have_count(3)
    wait_for_answer(page)
    rest = rest_classify(gateway, example_image.name, example_image.read_bytes(), "image/png", 3)
    assert_matches_rest(shown_outcome(page), rest.json())


# Builds a real File in the page from the test's bytes and delivers it the way a browser does.
DELIVER_FILE_JS = """
([how, name, bytes]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
  if (how === "paste") {
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
  } else {
    const zone = document.getElementById("dropzone");
    for (const type of ["dragenter", "dragover", "drop"]) {
      zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }
  }
}
"""


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_dropped_or_pasted_image_is_classified(open_page, gateway, example_image, how):
    page = open_page()
    data = example_image.read_bytes()
    page.evaluate(DELIVER_FILE_JS, [how, example_image.name, list(data)])
    wait_for_answer(page)
    rest = rest_classify(gateway, example_image.name, data, "image/png", 5)
    assert_matches_rest(shown_outcome(page), rest.json())
    assert "dragging" not in (page.locator("#dropzone").get_attribute("class") or "")


def test_text_file_shows_the_servers_message_and_request_id(open_page, gateway, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image\n")
    page = open_page()
    with page.expect_response(lambda r: "classify" in r.url) as answered:
        page.set_input_files("#file", text_file)
    request_id = answered.value.headers.get("x-request-id")
    assert request_id, "the gateway did not set x-request-id on its error answer"

    problem = page.locator("#problem")
    wait_for_answer(page, "#problem")
    expect(page.locator("#outcome")).to_be_hidden()
    rest = rest_classify(gateway, text_file.name, text_file.read_bytes(), "text/plain", 5)
    assert rest.status_code == 400
    expect(page.locator("#problem-title")).to_have_text("This file cannot be classified")
    expect(page.locator("#problem-message")).to_have_text(rest.json()["error"]["message"])
    expect(page.locator("#problem-detail")).to_contain_text(f"Request id: {request_id}")
    expect(page.locator("#problem-detail")).to_contain_text("HTTP 400")
    assert problem.get_attribute("role") == "alert"


def test_too_large_file_is_refused_with_a_clear_message(open_page, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 2**20))  # over the 10 MiB default body limit
    page = open_page()
    page.set_input_files("#file", big)
    wait_for_answer(page, "#problem")
    expect(page.locator("#problem-title")).to_have_text("The file is too large")
    expect(page.locator("#problem-detail")).to_contain_text("HTTP 413")


def test_keyboard_only(open_page, gateway, example_image):
    page = open_page()
    # Turn on file-chooser interception now, well before the key press: when `expect_file_chooser`
    # turns it on itself, the press can win the race and the chooser goes unseen.
    page.on("filechooser", lambda chooser: None)
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
        if focused[-1] == "dropzone":
            break
    assert focused[-1] == "dropzone", f"Tab never reached the picker; focus went {focused}"
    assert focused.index("top-k") < focused.index("dropzone"), f"focus order: {focused}"
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()")
    assert outline[0] != "none" and outline[1] >= 2, f"no visible focus on the picker: {outline}"

    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(example_image)
    wait_for_answer(page)
    assert page.evaluate("document.activeElement.id") == "dropzone", "focus was lost after the answer"

    live = page.locator("#announcer")
    assert live.get_attribute("aria-live") == "polite"
    rest = rest_classify(gateway, example_image.name, example_image.read_bytes(), "image/png", 5)
    expect(live).to_contain_text(rest.json()["label"])

    # Space works too, as on any button.
    with page.expect_file_chooser():
        page.keyboard.press(" ")


@pytest.mark.parametrize("width", [320, 360])
def test_narrow_screen_has_no_horizontal_scroll(open_page, example_image, width, tmp_path):
    page = open_page({"width": width, "height": 740})
    page.set_input_files("#file", example_image)
    wait_for_answer(page)
    scroll_width, client_width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width == width
    for selector in ("#dropzone", "#decision", "#bars", ".meta", "#examples:not([hidden])"):
        for box in (el.bounding_box() for el in page.locator(selector).all()):
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"{selector} overflows: {box}"
    page.screenshot(path=tmp_path / f"narrow-{width}.png", full_page=True)


def test_clicking_a_bundled_example_classifies_it(open_page, gateway):
    page = open_page()
    examples = page.locator("#example-list button")
    expect(page.locator("#examples")).to_be_visible()
    assert examples.count() >= 1
    first = examples.first
    url = first.get_attribute("data-url")
    first.click()
    wait_for_answer(page)

    image = httpx.get(f"{gateway.http_url}/{url.lstrip('/')}", timeout=10)
    assert image.status_code == 200, f"GET {url}: {image.status_code}"
    rest = rest_classify(gateway, url.rsplit("/", 1)[-1], image.content,
                         image.headers.get("content-type", "image/png"), 5)
    assert_matches_rest(shown_outcome(page), rest.json())


def test_model_selector_sends_to_the_chosen_model(open_page, two_model_gateway, example_image):
    page = open_page(url=two_model_gateway.http_url)
    expect(page.locator("#model-field")).to_be_visible()
    options = page.locator("#model option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["", "fashion", "absent"]
    expect(page.locator("#service-status")).to_have_attribute("data-state", "partial")
    data = example_image.read_bytes()

    page.select_option("#model", "fashion")
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.set_input_files("#file", example_image)
    assert "/v1/models/fashion:classify?top_k=5" in sent.value.url
    wait_for_answer(page)
    rest = rest_classify(two_model_gateway, example_image.name, data, "image/png", 5, model="fashion")
    assert_matches_rest(shown_outcome(page), rest.json())

    # Choosing another model asks again, for the image already on screen.
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.select_option("#model", "absent")
    assert "/v1/models/absent:classify" in sent.value.url
    wait_for_answer(page, "#problem")
    rest = rest_classify(two_model_gateway, example_image.name, data, "image/png", 5, model="absent")
    assert rest.status_code in (404, 503), rest.text
    expect(page.locator("#problem-message")).to_have_text(rest.json()["error"]["message"])
    expect(page.locator("#problem-detail")).to_contain_text(f"HTTP {rest.status_code}")


@pytest.fixture(scope="module")
def committed_gateway(committed_model):
    """A gateway in front of the committed model, which tells the example photos apart (the
    session's briefly trained model is unsure of every photo)."""
    server = stack.start_model_server(model_base_path=committed_model.parent)
    try:
        gw = stack.start_gateway(backend=server.grpc_target)
        yield gw
        gw.process.stop()
    finally:
        server.process.stop()


def test_photos_are_shrunk_in_the_browser_with_the_full_uploads_decision(open_page, committed_gateway):
    gateway = committed_gateway
    photos = {p.name: p.read_bytes() for p in stack.example_images() if p.parent.name == "photos"}
    assert photos, f"no example photos under {stack.EXAMPLES_DIR / 'photos'}"
    photos["camera-12mp.jpg"] = camera_photo()  # what a phone uploads: about 4 MB
    page = open_page(url=gateway.http_url)
    page.wait_for_load_state("networkidle")  # the model list and the input sizes (GET v1/fleet) are in
    for name, data in photos.items():
        with page.expect_request(lambda r: r.method == "POST") as sent:
            page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
        wait_for_answer(page)
        # Chromium does not hand a blob upload's body to Playwright; its length is in the headers.
        upload = int(sent.value.all_headers()["content-length"])
        assert upload < len(data) / (20 if len(data) > 2**20 else 1), f"{name}: {upload} B sent for {len(data)} B"
        expect(page.locator("#meta-upload")).to_have_attribute("data-shrunk", "true")
        expect(page.locator("#meta-upload")).to_contain_text("shrunk here to")
        shown = shown_outcome(page)
        full = rest_classify(gateway, name, data, "image/jpeg", 5).json()
        assert (shown["label"], shown["confident"]) == (full["label"], full["confident"]), name
        assert shown["bars"][0]["label"] == full["predictions"][0]["label"], name
        if name in ("bag-640x480.jpg", "sneaker-640x480.jpg"):  # the model is sure of these: a real decision
            assert shown["confident"] and shown["label"].lower() in name, (name, shown["label"])
        full_scores = {p["label"]: p["score"] for p in full["predictions"]}
        delta = max(abs(b["score"] - full_scores.get(b["label"], 0.0)) for b in shown["bars"])
        print(f"{name}: {len(data)} -> {upload} B, decision {shown['label']!r}, max score delta {delta:.4f}")

    # An image already near the model's size goes as it is.
    small = next(p for p in stack.example_images() if p.parent.name == "fashion")
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.set_input_files("#file", small)
    wait_for_answer(page)
    assert int(sent.value.all_headers()["content-length"]) > len(small.read_bytes())  # the file itself
    expect(page.locator("#meta-upload")).to_have_attribute("data-shrunk", "false")
    expect(page.locator("#meta-upload-row")).to_be_hidden()


def test_a_photo_of_something_else_is_not_sure_in_words_and_the_fleet_is_shown(open_page, committed_gateway):
    from training.oodset import photos

    coffee = next(p for p in photos() if "coffee" in p.name)
    page = open_page(url=committed_gateway.http_url)
    page.wait_for_load_state("networkidle")
    expect(page.locator("#fleet")).to_contain_text("Model servers: 1 of 1 healthy")
    expect(page.locator("#fleet")).to_contain_text("fashion v1 on 1")
    page.set_input_files("#file", files=[{"name": "coffee.png", "mimeType": "image/png", "buffer": coffee.data}])
    wait_for_answer(page)
    assert shown_outcome(page)["confident"] is False
    expect(page.locator("#decision-note")).to_contain_text("does not look like anything the model knows")
    expect(page.locator("#decision-note")).to_contain_text("T-shirt/top, Trouser")


def test_api_docs_render_offline(browser, gateway):
    """/docs is Swagger UI from the gateway's own files: with every request that leaves this machine
    blocked, the page still lists every operation of /openapi.json."""
    spec = httpx.get(f"{gateway.http_url}/openapi.json", timeout=10).json()
    context = browser.new_context(viewport=DESKTOP)
    blocked, script_errors = [], []

    def only_local(route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", only_local)
        page = context.new_page()
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))
        assert page.goto(f"{gateway.http_url}/docs").ok
        for item in spec["paths"].values():
            for operation in item.values():
                tag = operation.get("tags", ["default"])[0].replace(" ", "_")
                expect(page.locator(f"#operations-{tag}-{operation['operationId']}")).to_be_visible(timeout=15_000)
        expect(page.locator(".opblock")).to_have_count(sum(len(item) for item in spec["paths"].values()))
        expect(page.locator("button.authorize")).to_be_visible()  # the bearer scheme
    finally:
        context.close()
    assert not blocked, f"/docs asked for files from elsewhere: {blocked}"
    assert not script_errors, script_errors
