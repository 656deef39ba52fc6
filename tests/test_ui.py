"""The Streamlit page through streamlit.testing.v1.AppTest, with the HTTP layer faked by httpx.MockTransport."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import httpx
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui.api_client
from search_api.schemas import HealthResponse, SearchRequest, SearchResponse

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def hit(i: int, name: str = "cat") -> dict:
    taken = {"taken_at": f"2019-06-0{i + 1}T09:30:00", "taken_at_source": "exif", "camera_make": "FUJIFILM",
             "camera_model": "X100V", "format": "JPEG"} if i == 0 else {}
    return {"id": f"id{i}", "path": f"/photos/{name}{i}.jpg", "score": 0.9 - i / 100, "width": 640, "height": 480,
            "image_url": f"/images/id{i}", "thumbnail_url": f"/images/id{i}/thumbnail", **taken}


class FakeApi:
    """Answers like the search API and records what it was asked.

    Every request body the page sends is validated with the API's own request model, and every answer with
    the API's response models, so the fake cannot drift from the real API unnoticed.
    """

    def __init__(self, count=3, results=3, search_status=200, search_detail=""):
        self.count = count
        self.results = results
        self.search_status = search_status
        self.search_detail = search_detail
        self.searches: list[dict] = []
        self.uploads: list[dict] = []  # form fields of POST /search/image, with the file's bytes under "file"
        self.fetched: list[str] = []  # image and thumbnail paths requested

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return self._json(HealthResponse, {"status": "ok", "model": "/models/clip", "dim": 512,
                                               "count": self.count, "vector_cache": "fresh"})
        if request.url.path == "/search":
            body = json.loads(request.content)
            SearchRequest.model_validate(body)  # the page sends only what the API accepts
            self.searches.append(body)
            # Results of "more like this" are named after the image, so a test sees which answer is shown.
            return self._results(body.get("limit", 20), f"like-{body['image_id']}-" if "image_id" in body else "cat")
        if request.url.path == "/search/image":
            form = parse_multipart(request)
            query = json.loads(form.get("query", "{}"))
            SearchRequest.model_validate(query, context={"has_upload": True})
            self.uploads.append({"file": form["file"], **query})
            return self._results(query.get("limit", 20))
        if request.url.path.startswith("/images/"):
            self.fetched.append(request.url.path)
            return httpx.Response(200, content=jpeg(), headers={"content-type": "image/jpeg"})
        return httpx.Response(404, json={"detail": "not found"})

    def _results(self, limit: int, name: str = "cat") -> httpx.Response:
        if self.search_status != 200:
            return httpx.Response(self.search_status, json={"detail": self.search_detail})
        n = min(self.results, limit)
        return self._json(SearchResponse, {"results": [hit(i, name) for i in range(n)], "took_ms": 12.5, "notes": []})

    @staticmethod
    def _json(model, body: dict) -> httpx.Response:
        return httpx.Response(200, json=model.model_validate(body).model_dump(mode="json"))


def parse_multipart(request: httpx.Request) -> dict:
    """The fields of a multipart/form-data body; a file field's value is its bytes."""
    from email.parser import BytesParser
    from email.policy import HTTP

    header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(header + request.content)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[name] = payload if part.get_filename() else payload.decode()
    return fields


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
    shown = texts(app)
    assert "like-id2-0.jpg" in shown and "cat0.jpg" not in shown  # the grid now shows the new answer


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
    assert "min_score" not in api.searches[-1]  # the slider at its lowest means no minimum
    next(s for s in app.sidebar.slider if s.label == "Minimum score").set_value(0.25).run()
    assert api.searches[-1]["min_score"] == pytest.approx(0.25)
    next(s for s in app.sidebar.slider if s.label == "Results per page").set_value(35).run()
    assert api.searches[-1]["limit"] == 35


def test_photo_filters_and_newest_first_reach_the_api(fake):
    api = fake(FakeApi())
    app = run("beach")
    assert "filter" not in api.searches[-1] and "sort" not in api.searches[-1]
    next(d for d in app.sidebar.date_input if d.label == "Taken on or after").set_value(date(2019, 6, 1)).run()
    next(d for d in app.sidebar.date_input if d.label == "Taken before").set_value(date(2019, 7, 1)).run()
    next(m for m in app.sidebar.multiselect if m.label == "Formats").select("JPEG").select("HEIF").run()
    next(t for t in app.sidebar.text_input if t.label == "Camera model").input(" X100V ").run()
    next(t for t in app.sidebar.toggle if t.label == "Newest first").set_value(True).run()
    assert api.searches[-1]["filter"] == {"taken_after": "2019-06-01", "taken_before": "2019-07-01",
                                          "formats": ["JPEG", "HEIF"], "cameras": ["X100V"]}
    assert api.searches[-1]["sort"] == "newest"
    assert "**0.900** · cat0.jpg · 2019-06-01" in texts(app)  # when it was taken, under the thumbnail
    next(b for b in app.button if b.key == "view-id0").click().run()
    assert "Taken 2019-06-01 09:30:00  ·  FUJIFILM X100V  ·  JPEG" in texts(app)


def test_negative_text_is_sent_with_the_query(fake):
    api = fake(FakeApi())
    app = run("a dog on a beach")
    assert "negative_text" not in api.searches[-1]
    next(t for t in app.text_input if t.label == "…but not").input("people").run()
    assert api.searches[-1]["text"] == "a dog on a beach" and api.searches[-1]["negative_text"] == "people"


def test_the_grid_shows_thumbnails_and_the_preview_the_original(fake):
    api = fake(FakeApi(results=4))
    app = run("cats")
    assert sorted(api.fetched) == sorted(f"/images/id{i}/thumbnail" for i in range(4))
    api.fetched.clear()
    next(b for b in app.button if b.key == "view-id1").click().run()
    assert not app.exception
    originals = [path for path in api.fetched if not path.endswith("/thumbnail")]
    assert originals == ["/images/id1"]  # only the preview loads a full-size original


def test_more_like_this_says_which_image_it_shows_and_can_go_back(fake):
    api = fake(FakeApi())
    app = run("cats")
    next(b for b in app.button if b.key == "like-id1").click().run()
    assert "Showing images like **cat1.jpg**" in [i.value for i in app.info]
    next(b for b in app.button if "Back to text search" in b.label).click().run()
    assert not any("Showing images like" in i.value for i in app.info)
    assert len(api.searches) == 2  # the text search, then more-like-this; going back asks nothing new


def test_an_uploaded_image_is_sent_to_the_api_with_the_text(fake, monkeypatch):
    api = fake(FakeApi(results=2))
    data = jpeg()

    class Upload:  # what st.file_uploader returns, with the attributes the page reads
        name, file_id = "query.jpg", "upload-1"

        def getvalue(self):
            return data

    monkeypatch.setattr(st, "file_uploader", lambda *args, **kwargs: Upload())
    app = run("at night")
    assert not app.exception
    assert api.searches == []
    assert api.uploads[-1]["file"] == data and api.uploads[-1]["text"] == "at night"
    assert api.uploads[-1]["limit"] == 20
    assert "2 results in 12 ms" in texts(app)
    # Every other control reaches an upload search too.
    next(t for t in app.text_input if t.label == "…but not").input("people").run()
    next(s for s in app.sidebar.slider if s.label == "Minimum score").set_value(0.25).run()
    app.sidebar.text_input[0].input("/photos/2024/").run()
    sent = api.uploads[-1]
    assert sent["negative_text"] == "people" and sent["min_score"] == pytest.approx(0.25)
    assert sent["filter"] == {"path_prefix": "/photos/2024/"} and api.searches == []


def test_with_a_ui_password_nothing_is_shown_or_asked_of_the_api_until_it_is_given(fake, monkeypatch):
    api = fake(FakeApi())
    monkeypatch.setenv("IMGSEARCH_UI_PASSWORD", "open sesame")
    app = AppTest.from_file(APP, default_timeout=30).run()
    assert [t.label for t in app.text_input] == ["Password"] and not app.sidebar.slider
    assert api.searches == [] and not app.metric  # not even the image count

    app.text_input(key="ui_password").input("wrong")
    app.button[0].click().run()
    assert "Wrong password." in texts(app) and [t.label for t in app.text_input] == ["Password"]

    app.text_input(key="ui_password").input("open sesame")
    app.button[0].click().run()
    app.text_input(key="query_text").input("beach").run()
    assert api.searches[-1]["text"] == "beach"
