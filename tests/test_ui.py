"""The Streamlit page through streamlit.testing.v1.AppTest, with the HTTP layer faked by httpx.MockTransport."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui.api_client

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def hit(i: int) -> dict:
    return {"id": f"id{i}", "path": f"/photos/cat{i}.jpg", "score": 0.9 - i / 100, "width": 640, "height": 480,
            "image_url": f"/images/id{i}", "thumbnail_url": f"/images/id{i}/thumbnail"}


class FakeApi:
    """Answers like the search API and records the search bodies it got."""

    def __init__(self, count=3, results=3, search_status=200, search_detail=""):
        self.count = count
        self.results = results
        self.search_status = search_status
        self.search_detail = search_detail
        self.searches: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "model": "/models/clip", "dim": 512, "count": self.count})
        if request.url.path == "/search":
            body = json.loads(request.content)
            self.searches.append(body)
            if self.search_status != 200:
                return httpx.Response(self.search_status, json={"detail": self.search_detail})
            n = min(self.results, body.get("limit", 20))
            return httpx.Response(200, json={"results": [hit(i) for i in range(n)], "took_ms": 12.5, "notes": []})
        if request.url.path.startswith("/images/"):
            return httpx.Response(200, content=jpeg(), headers={"content-type": "image/jpeg"})
        return httpx.Response(404, json={"detail": "not found"})


@pytest.fixture
def fake(monkeypatch):
    def install(api):
        monkeypatch.setattr(ui.api_client, "TRANSPORT", httpx.MockTransport(api))
        st.cache_resource.clear()
        return api
    yield install
    st.cache_resource.clear()


def run(query: str | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=30).run()
    if query is not None:
        app.text_input(key="query_text").input(query).run()
    return app


def texts(app: AppTest) -> str:
    parts = [e.value for kind in ("error", "info", "warning", "caption", "markdown") for e in app.get(kind)]
    return "\n".join(str(p) for p in parts)


def test_unreachable_api_names_the_url_it_tried(fake, monkeypatch):
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    fake(refuse)
    monkeypatch.setenv("IMGSEARCH_API_URL", "http://127.0.0.1:9")
    app = run()
    assert not app.exception
    assert "http://127.0.0.1:9" in app.error[0].value and "imgsearch serve" in app.error[0].value


def test_empty_index_says_how_to_index(fake):
    fake(FakeApi(count=0))
    app = run()
    assert not app.exception
    assert "imgsearch index" in app.info[0].value


def test_text_search_shows_a_grid_with_scores_and_file_names(fake):
    api = fake(FakeApi(results=7))
    app = run("a cat on a sofa")
    assert not app.exception
    assert api.searches[-1]["text"] == "a cat on a sofa"
    shown = texts(app)
    assert "cat0.jpg" in shown and "0.900" in shown and "cat6.jpg" in shown
    assert "7 results in 12 ms" in shown
    assert len(app.get("image")) == 7
    assert sum(1 for b in app.button if b.label == "More like this") == 7


def test_more_like_this_searches_by_that_image_id(fake):
    api = fake(FakeApi())
    app = run("cats")
    like = next(b for b in app.button if b.key == "like-id2")
    like.click().run()
    assert not app.exception
    assert api.searches[-1]["image_id"] == "id2" and "text" not in api.searches[-1]
    assert "cat2.jpg" in texts(app)


def test_load_more_asks_for_the_next_page(fake):
    api = fake(FakeApi(results=500))
    app = run("cats")
    assert api.searches[-1]["limit"] == 20
    next(b for b in app.button if b.label == "Load more").click().run()
    assert api.searches[-1]["limit"] == 40 and len(app.get("image")) == 40


def test_no_results_says_so(fake):
    fake(FakeApi(results=0))
    app = run("unicorn")
    assert not app.exception
    assert "No results" in app.warning[0].value


def test_api_errors_are_shown_as_messages(fake):
    fake(FakeApi(search_status=422, search_detail="text: must not be empty or only whitespace"))
    app = run("x")
    assert not app.exception
    assert "must not be empty" in app.error[0].value


def test_controls_reach_the_api(fake):
    api = fake(FakeApi())
    app = AppTest.from_file(APP, default_timeout=30).run()
    app.sidebar.text_input[0].input("/photos/2024/").run()
    app.text_input(key="query_text").input("beach").run()
    assert api.searches[-1]["filter"] == {"path_prefix": "/photos/2024/"}
