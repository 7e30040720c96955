"""Refresh docs/screenshot.png, the README's picture of the web page.

    python -m tools.screenshot [IMAGE]

Starts the stack on the committed model (`models/`, as `make up` does, on free ports), opens the
page in headless Debian Chromium (the browser tests' setup), uploads IMAGE (default: the ankle
boot example) and saves the full page once the answer is shown. The stack is stopped after, also
when a step fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.stack import EXAMPLES_DIR, ROOT, start_stack

SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no sandbox (CI runs as root), no GPU, no calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1100, "height": 820}
ANSWER_TIMEOUT_MS = 30_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=EXAMPLES_DIR / "fashion" / "ankle-boot.png")
    parser.add_argument("--output", type=Path, default=SCREENSHOT)
    args = parser.parse_args(argv)
    if not args.image.is_file():
        parser.error(f"{args.image}: no such file")
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    stack = start_stack()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport=VIEWPORT, color_scheme="light").new_page()
                expect.set_options(timeout=ANSWER_TIMEOUT_MS)
                page.goto(f"{stack.gateway.http_url}/")
                page.set_input_files("#file", str(args.image))
                expect(page.locator("#result-card")).to_have_attribute("aria-busy", "false")
                expect(page.locator("#outcome")).to_be_visible()
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True)
            finally:
                browser.close()
    finally:
        stack.stop()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
