"""End to end in a real headless Chromium: the real API and the real Streamlit UI, a typed query, images shown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.photos import write_exif_photo, write_photo
from tests.support.processes import cli_environment, http_ready, start_api, start_server, stop_process

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
        lambda port: [imgsearch_bin, "ui", "--port", str(port), "--api-url", server],
        server_env,
        http_ready("/_stcore/health"),
        timeout_s=60,
    )
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


@pytest.fixture
def page():
    """A page in a real headless Chromium, closed after the test."""
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1400})
        finally:
            browser.close()


def search_for(page, url: str, text: str, only_matches: bool = False) -> None:
    """Open the UI and search as a person does: type in the query box, press Enter.

    The tiny test model scores every image alike, so nothing stands out from the collection and "Only matches"
    (on by default) would show nothing: tests not about it switch it off first, as a person can.
    """
    page.goto(url)
    if not only_matches:
        switch_off_only_matches(page)
    box = page.get_by_label("Describe what you are looking for, then press Enter")
    box.fill(text)
    box.press("Enter")


def switch_off_only_matches(page) -> None:
    from playwright.sync_api import expect

    toggle = page.get_by_role("switch", name="Only matches")
    expect(toggle).to_be_checked(timeout=30_000)
    page.get_by_text("Only matches", exact=True).click()
    expect(toggle).not_to_be_checked()


@pytest.mark.slow
@pytest.mark.browser
def test_typing_a_query_shows_result_images_and_more_like_this_works(ui_url, page, artefacts):
    from playwright.sync_api import expect

    search_for(page, ui_url, "colourful blocks")
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


@contextlib.contextmanager
def indexed_api_and_ui(imgsearch_bin: str, photos: Path, data: Path, model_dir: Path):
    """``photos`` indexed into ``data``, then a real API and UI over them: the UI's URL. Both stopped after."""
    env = {**cli_environment(data, model_dir), "IMGSEARCH_ALLOWED_ROOTS": json.dumps([str(photos)])}
    subprocess.run([imgsearch_bin, "index", str(photos)], env=env, check=True, capture_output=True, timeout=120)
    api, base = start_api(imgsearch_bin, env)
    try:
        ui, port = start_server(
            lambda port: [imgsearch_bin, "ui", "--port", str(port), "--api-url", base],
            env,
            http_ready("/_stcore/health"),
            timeout_s=60,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(ui)
    finally:
        stop_process(api)


@pytest.fixture
def dated_ui_url(tmp_path, imgsearch_bin, tiny_model_dir):
    """Its own API and UI over photos with EXIF capture dates (the shared server's photos have none)."""
    photos = tmp_path / "photos"
    write_exif_photo(photos / "beach2019.jpg", seed=1, taken="2019:06:01 09:30:00", model="X100V")
    write_exif_photo(photos / "party2021.jpg", seed=2, taken="2021:12:24 18:00:00", model="iPhone 12")
    write_exif_photo(photos / "hike2023.jpg", seed=3, taken="2023:08:15 07:00:00", model="X100V")
    scan = write_photo(photos / "scan2024.png", seed=4)  # no EXIF: dated by its mtime
    os.utime(scan, (datetime(2024, 3, 1, 12).timestamp(),) * 2)
    with indexed_api_and_ui(imgsearch_bin, photos, tmp_path / "data", tiny_model_dir) as url:
        yield url


def shown_names(page) -> list[str]:
    """The file names under the result grid's thumbnails, in the order shown ("**0.812** · name · 2019-06-01")."""
    captions = page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
    return [match.group(1) for text in captions if (match := re.search(r"^-?[\d.]+ · (\S+) · \d{4}-", text.strip()))]


def type_date(page, label: str, year: str, month: str, day: str) -> None:
    """Type into a date field's year, month and day as a person does, then leave it."""
    for part, value in (("year", year), ("month", month), ("day", day)):
        page.get_by_role("spinbutton", name=f"{part}, {label}").click()
        page.keyboard.type(value)
    page.keyboard.press("Escape")  # close the calendar the field opened
    page.get_by_role("heading", name="imgsearch").click()  # and leave the field


def wait_for_names(page, expected: list[str], in_order: bool = True, timeout_s: float = 30) -> None:
    """Wait until the grid shows ``expected`` (in that order, or in any), then assert it."""

    def shown():
        names = shown_names(page)
        return names if in_order else sorted(names)

    wanted = expected if in_order else sorted(expected)
    deadline = time.monotonic() + timeout_s
    while (names := shown()) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert names == wanted, page.locator("[data-testid='stCaptionContainer']").all_inner_texts()


@pytest.mark.slow
@pytest.mark.browser
def test_the_date_range_and_newest_first_narrow_and_order_the_results(dated_ui_url, page, artefacts):
    search_for(page, dated_ui_url, "colourful blocks")
    wait_for_names(page, ["beach2019.jpg", "hike2023.jpg", "party2021.jpg", "scan2024.png"], in_order=False)

    type_date(page, "Taken on or after", "2020", "01", "01")
    wait_for_names(page, ["hike2023.jpg", "party2021.jpg", "scan2024.png"], in_order=False)

    page.get_by_text("Newest first").click()
    wait_for_names(page, ["scan2024.png", "hike2023.jpg", "party2021.jpg"])
    page.screenshot(path=str(artefacts / "ui-dates-newest.png"), full_page=True)

    type_date(page, "Taken before", "2023", "01", "01")
    wait_for_names(page, ["party2021.jpg"])


@pytest.fixture
def own_ui_url(tmp_path, imgsearch_bin, tiny_model_dir):
    """Its own API and UI over ten photos, so the label sets it adds reach no other test."""
    from tests.support.photos import write_photo_set

    photos = write_photo_set(tmp_path / "photos")
    with indexed_api_and_ui(imgsearch_bin, photos, tmp_path / "data", tiny_model_dir) as url:
        yield url


@pytest.mark.slow
@pytest.mark.browser
def test_a_pasted_label_set_tags_the_images_and_its_tags_filter_the_search(own_ui_url, page, artefacts):
    from playwright.sync_api import expect

    page.goto(own_ui_url)
    page.get_by_text("Label sets", exact=True).click()
    page.get_by_role("textbox", name="Name").fill("pets")
    page.get_by_role("textbox", name="Labels, one per line").fill("dog\ncat\nbeach")
    page.get_by_role("spinbutton", name="Minimum score").fill("-1")
    page.get_by_role("button", name="Tag images").click()
    expect(page.get_by_text("“pets”: 10 of 10 images tagged")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("**pets**", exact=False).or_(page.get_by_text("pets · 3 labels"))).to_be_visible()
    expect(page.locator("[data-testid='stDataFrame']")).to_be_visible()
    page.screenshot(path=str(artefacts / "ui-label-set.png"), full_page=True)

    page.get_by_text("Search", exact=True).first.click()
    switch_off_only_matches(page)
    box = page.get_by_label("Describe what you are looking for, then press Enter")
    box.fill("colourful blocks")
    box.press("Enter")
    results = page.locator("[data-testid='stImage'] img")
    expect(results.first).to_be_visible(timeout=30_000)
    chips = page.locator("[data-testid='stMarkdownContainer'] span", has_text=re.compile(r"^(dog|cat|beach)$"))
    assert chips.count() >= 10  # a chip or more under each of the ten results
    page.get_by_text("Tags", exact=True).last.scroll_into_view_if_needed()
    page.locator("[data-testid='stMultiSelect']", has_text="Tags").click()
    option = page.get_by_role("option", name=re.compile(r"\(\d+\)$")).first
    text = option.inner_text()
    found = re.search(r"(\w+) \((\d+)\)", text)
    assert found, f"a tag option reads 'label (count)', not {text!r}"
    label, count = found.groups()
    option.click()
    page.keyboard.press("Escape")
    expect(page.get_by_text(f"{count} results in")).to_be_visible(timeout=30_000)
    page.screenshot(path=str(artefacts / "ui-tag-filter.png"), full_page=True)


@pytest.fixture(scope="module")
def relevance_ui_url(tmp_path_factory, imgsearch_bin):
    """Its own API and UI over the relevance library (a real photo, its copies and other pictures), indexed by
    the small random-weight model, whose scores do set a photo and its copies apart from the rest."""
    from tests.support.library import write_library
    from tests.support.models import build_local_clip

    folder = tmp_path_factory.mktemp("relevance-ui")
    model_dir = build_local_clip(folder / "small-clip", "small", seed=0)
    photos = write_library(folder / "library")
    with indexed_api_and_ui(imgsearch_bin, photos, folder / "data", model_dir) as url:
        yield url, photos


def grid_names(page) -> list[str]:
    """The file names of the results and the folded images shown, in order ("**0.812** · name[ · date]")."""
    captions = page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
    return [m.group(1) for text in captions if (m := re.match(r"^-?\d\.\d{3} · (\S+)", text.strip()))]


def grid_column(page, name: str):
    """The grid column of the result named ``name``."""
    return page.locator("[data-testid='stColumn']", has=page.get_by_text(re.compile(rf"· {re.escape(name)}( ·|$)")))


@pytest.mark.slow
@pytest.mark.browser
def test_an_example_photo_shows_its_copies_folded_and_the_query_builder_combines_terms(
    relevance_ui_url, page, artefacts
):
    from playwright.sync_api import expect

    from tests.support.library import COPIES, ORIGINAL

    url, photos = relevance_ui_url
    page.goto(url)
    uploader = page.locator("[data-testid='stFileUploader']", has_text="drop an example image")
    uploader.locator("input[type='file']").set_input_files(str(photos / ORIGINAL))
    # "Only matches" and "Fold near-duplicates" are on: the photo, with its four copies folded under it.
    expect(page.get_by_role("button", name="+4 similar")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("only matches:")).to_be_visible()
    grid = grid_names(page)
    assert len(grid) <= 3 and grid[0] == "IMG_2041.jpg", grid  # stops soon after the photo
    page.screenshot(path=str(artefacts / "ui-only-matches-folded.png"), full_page=True)

    page.get_by_role("button", name="+4 similar").click()
    for copy in COPIES:
        expect(page.get_by_text(re.compile(rf"· {re.escape(Path(copy).name)}$"))).to_be_visible(timeout=30_000)
    page.screenshot(path=str(artefacts / "ui-similar-expanded.png"), full_page=True)

    # Hovering the score explains it: the upload's cosine and share.
    page.mouse.move(0, 0)  # away from the button's own tooltip
    page.locator("[data-testid='stCaptionContainer']", has_text="IMG_2041.jpg").first.locator(
        "[data-testid='stTooltipIcon'], [data-testid='stTooltipHoverTarget']"
    ).first.hover()
    expect(page.get_by_text(re.compile(r"upload IMG_2041\.jpg: cosine \+1\.000"))).to_be_visible(timeout=10_000)

    # Every image, best first; then a crop of the other photo, added to the query, pulls itself up.
    switch_off_only_matches(page)
    expect(page.get_by_text("only matches:")).not_to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Load more").click()
    expect(page.get_by_text(re.compile(r"^40 results in"))).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Load more").click()
    add = grid_column(page, "flower_crop2.jpg").get_by_role("button", name="Add to query")
    expect(add).to_be_visible(timeout=30_000)
    before = grid_names(page).index("flower_crop2.jpg")
    add.click()
    expect(page.get_by_text("Combine words and images (1 added)")).to_be_visible(timeout=30_000)

    def position(name: str, timeout_s: float, wanted) -> int | None:
        deadline = time.monotonic() + timeout_s
        while True:
            names = grid_names(page)
            found = names.index(name) if name in names else None
            if wanted(found) or time.monotonic() > deadline:
                return found

    after = position("flower_crop2.jpg", 30, lambda found: found is not None and found < before)
    assert after is not None and after < before, (before, after, grid_names(page))
    # Its weight slider at the top (3): it leads the query, and the crop comes out on top.
    weight = page.get_by_role("slider", name="Weight")
    weight.focus()
    weight.press("End")
    expect(weight).to_have_value("3", timeout=10_000)
    top = position("flower_crop2.jpg", 30, lambda found: found is not None and found < 3)
    assert top is not None and top < 3, (before, after, top, grid_names(page))
    page.screenshot(path=str(artefacts / "ui-query-builder.png"), full_page=True)

    # "− not like" pushes it away again: past the first page.
    page.get_by_text("− not like").click()
    away = position("flower_crop2.jpg", 30, lambda found: found is None or found >= 20)
    assert away is None or away >= 20, grid_names(page)

    # An uploaded image joins the query as a term of its own (the uploader empties for the next one).
    adder = page.locator("[data-testid='stFileUploader']", has_text="Add an image")
    adder.locator("input[type='file']").set_input_files(str(photos / "misc/flower.jpg"))
    expect(page.get_by_text("Combine words and images (2 added)")).to_be_visible(timeout=30_000)
    builder = page.locator("[data-testid='stExpander'] [data-testid='stMarkdownContainer']")
    expect(builder.get_by_text("flower.jpg", exact=True)).to_be_visible()
    expect(adder.get_by_text("flower.jpg")).to_have_count(0)
    expect(page.get_by_text(re.compile(r"^20 results in"))).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stAlert']")).to_have_count(0)  # no error from the API

    # The preview explains a result term by term.
    page.get_by_role("button", name="View large").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Why it matched")).to_be_visible(timeout=30_000)
    expect(dialog.locator("[data-testid='stDataFrame']")).to_be_visible()
    page.screenshot(path=str(artefacts / "ui-explanation.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.browser
def test_a_file_name_is_found_with_words_matched_by_default(relevance_ui_url, page, artefacts):
    from playwright.sync_api import expect

    url, _ = relevance_ui_url
    page.goto(url)
    expect(page.get_by_role("switch", name="Match words too")).to_be_checked(timeout=30_000)
    box = page.get_by_label("Describe what you are looking for, then press Enter")
    box.fill("IMG_2041")
    box.press("Enter")
    expect(page.get_by_text("word match").first).to_be_visible(timeout=60_000)
    assert grid_names(page)[0] == "IMG_2041.jpg", grid_names(page)
    first = page.locator("[data-testid='stCaptionContainer']", has_text="IMG_2041.jpg").first
    assert first.inner_text().strip().endswith("· 🔤 word match")
    page.screenshot(path=str(artefacts / "ui-name-match.png"), full_page=True)


@pytest.fixture
def text_ui_url(tmp_path, imgsearch_bin, tiny_model_dir):
    """Its own API and UI over pictures with text in them and photos without (tests/support/text_pictures.py)."""
    from tests.support.text_pictures import write_corpus

    write_corpus(tmp_path / "pictures", with_photos=2)
    with indexed_api_and_ui(imgsearch_bin, tmp_path / "pictures", tmp_path / "data", tiny_model_dir) as url:
        yield url


@pytest.mark.slow
@pytest.mark.browser
def test_the_preview_shows_the_text_read_with_the_query_words_marked(text_ui_url, page, artefacts):
    from playwright.sync_api import expect

    search_for(page, text_ui_url, "0x80070005")
    expect(page.get_by_text("word match").first).to_be_visible(timeout=60_000)
    assert grid_names(page)[0] == "error_dialog.png", grid_names(page)
    page.get_by_role("button", name="View large").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Text in the picture")).to_be_visible(timeout=30_000)
    expect(dialog.get_by_text("Access is denied")).to_be_visible()
    marked = dialog.locator("[data-testid='stMarkdownContainer'] span", has_text="0x80070005")
    expect(marked.first).to_be_visible()
    backgrounds = marked.evaluate_all("spans => spans.map(span => getComputedStyle(span).backgroundColor)")
    assert any(colour not in ("rgba(0, 0, 0, 0)", "transparent") for colour in backgrounds), backgrounds
    page.screenshot(path=str(artefacts / "ui-text-in-picture.png"), full_page=True)
    page.keyboard.press("Escape")

    # The sidebar's "Only pictures with text" leaves the photos out.
    page.get_by_text("Only pictures with text", exact=True).click()
    deadline = time.monotonic() + 30
    while any(name.startswith("photo_") for name in grid_names(page)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = grid_names(page)
    assert names and not any(name.startswith("photo_") for name in names), names
