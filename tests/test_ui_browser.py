"""End to end in a real headless Chromium: the real API and the real Streamlit UI, a typed query, images shown."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import http_ready, start_server, stop_process

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def artefacts(tmp_path) -> Path:
    """Screenshots go to a temporary folder, or to $TEST_ARTEFACTS (never into the repository unasked)."""
    folder = Path(os.environ.get("TEST_ARTEFACTS") or tmp_path / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def ui_url(server, imgsearch_bin, server_env):
    process, port = start_server(
        lambda port: [imgsearch_bin, "ui", "--port", str(port), "--api-url", server], server_env,
        http_ready("/_stcore/health"), timeout_s=60)
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


@pytest.mark.slow
@pytest.mark.browser
def test_typing_a_query_shows_result_images_and_more_like_this_works(ui_url, artefacts):
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(ui_url)
        box = page.get_by_label("Describe what you are looking for, then press Enter")
        box.fill("colourful blocks")
        box.press("Enter")
        results = page.locator("[data-testid='stImage'] img")
        expect(results.first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("results in")).to_be_visible()
        assert results.count() >= 5
        assert page.locator("[data-testid='stImage'] img").first.evaluate("img => img.naturalWidth") > 0
        page.screenshot(path=str(artefacts / "ui-results.png"), full_page=True)

        page.get_by_role("button", name="More like this").first.click()
        expect(page.get_by_text("Showing images like")).to_be_visible(timeout=30_000)
        expect(results.first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(artefacts / "ui-more-like-this.png"), full_page=True)
        browser.close()
