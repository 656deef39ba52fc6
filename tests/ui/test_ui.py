"""The Streamlit page through streamlit.testing.v1.AppTest, with the HTTP layer faked by httpx.MockTransport."""

from __future__ import annotations

import io
import json
from datetime import date

import httpx
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from imgsearch.search.requests import SearchRequest, SearchResponse
from imgsearch.search_api.schemas import HealthResponse, IndexJob, LabelSetInfo, LabelSetRequest, TagCountsResponse
from imgsearch.ui import api_client
from imgsearch.ui.search_request import SearchState, result_limit, search_body, upload_files
from tests.support import REPO

APP = str(REPO / "ui" / "app.py")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def hit(i: int, name: str = "cat") -> dict:
    taken = (
        {
            "taken_at": f"2019-06-0{i + 1}T09:30:00",
            "taken_at_source": "exif",
            "camera_make": "FUJIFILM",
            "camera_model": "X100V",
            "format": "JPEG",
        }
        if i == 0
        else {}
    )
    tags = {"tags": ["dog", "beach [x](http://evil)"], "tag_scores": [0.31, 0.27]} if i == 1 else {}
    return {
        "id": f"id{i}",
        "path": f"/photos/{name}{i}.jpg",
        "score": 0.9 - i / 100,
        "width": 640,
        "height": 480,
        "image_url": f"/images/id{i}",
        "thumbnail_url": f"/images/id{i}/thumbnail",
        **taken,
        **tags,
    }


class FakeApi:
    """Answers like the search API and records what it was asked.

    Every request body the page sends is validated with the API's own request model, and every answer with
    the API's response models, so the fake cannot drift from the real API unnoticed.
    """

    def __init__(self, count=3, results=3, search_status=200, search_detail="", matches=None):
        self.count = count
        self.results = results
        self.matches = results if matches is None else matches  # results that clear an auto cutoff
        self.name = "cat"  # results are named name0.jpg, name1.jpg ...
        self.search_status = search_status
        self.search_detail = search_detail
        self.searches: list[dict] = []
        self.uploads: list[dict] = []  # form fields of POST /search/image, with the file's bytes under "file"
        self.fetched: list[str] = []  # image and thumbnail paths requested
        self.tag_counts = {"dog": 7, "beach": 2}
        self.label_sets: list[dict] = []
        self.label_requests: list[dict] = []  # bodies of POST /labels
        self.deleted: list[str] = []
        self.job_polls = 0
        self.unfinished: list[dict] = []  # GET /index: the server's queued and running jobs

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return self._json(
                HealthResponse,
                {"status": "ok", "model": "/models/clip", "dim": 512, "count": self.count, "vector_cache": "fresh"},
            )
        if request.url.path == "/search":
            body = json.loads(request.content)
            SearchRequest.model_validate(body)  # the page sends only what the API accepts
            self.searches.append(body)
            # Results of "more like this" are named after the image, so a test sees which answer is shown.
            return self._results(body, f"like-{body['image_id']}-" if "image_id" in body else self.name)
        if request.url.path == "/search/image":
            form = parse_multipart(request)
            query = json.loads(form.get("query", "{}"))
            SearchRequest.model_validate(query, context={"has_upload": True})
            files = form.get("files", [])
            self.uploads.append({"file": files[0][1], "files": files, **query})
            return self._results(query)
        if request.url.path == "/tags":
            return self._json(TagCountsResponse, {"images": self.count, "tagged": 7, "tags": self.tag_counts})
        if request.url.path == "/labels" and request.method == "GET":
            return httpx.Response(200, json=[LabelSetInfo.model_validate(s).model_dump() for s in self.label_sets])
        if request.url.path == "/labels" and request.method == "POST":
            body = json.loads(request.content)
            LabelSetRequest.model_validate(body)
            self.label_requests.append(body)
            return self._json(IndexJob, {"job_id": "job1", "kind": "tag", "state": "queued", "label_set": body["name"]})
        if request.url.path.startswith("/labels/") and request.method == "DELETE":
            self.deleted.append(request.url.path.rsplit("/", 1)[1])
            return self._json(IndexJob, {"job_id": "job2", "kind": "tag", "state": "queued"})
        if request.url.path == "/index" and request.method == "GET":
            return httpx.Response(
                200, json=[IndexJob.model_validate(j).model_dump(mode="json") for j in self.unfinished]
            )
        if request.url.path.startswith("/index/"):
            self.job_polls += 1
            done = self.job_polls >= 2  # running once, then done
            report = {
                "label_set": "pets",
                "images": 3,
                "tagged": 2,
                "updated": 2,
                "label_sets": ["pets"],
                "counts": {"dog": 2, "cat": 0},
                "exported": None,
                "elapsed_s": 0.1,
            }
            return self._json(
                IndexJob,
                {
                    "job_id": "job1",
                    "kind": "tag",
                    "state": "done" if done else "running",
                    "processed": 3 if done else 1,
                    "total": 3,
                    "report": report if done else None,
                },
            )
        if request.url.path.startswith("/images/"):
            self.fetched.append(request.url.path)
            return httpx.Response(200, content=jpeg(), headers={"content-type": "image/jpeg"})
        return httpx.Response(404, json={"detail": "not found"})

    def _results(self, body: dict, name: str = "cat") -> httpx.Response:
        """Results as the API gives them for ``body``: cut, folded and explained when it asks."""
        if self.search_status != 200:
            return httpx.Response(self.search_status, json={"detail": self.search_detail})
        auto = body.get("cutoff") == "auto"
        hits = [hit(i, name) for i in range(min(self.matches if auto else self.results, body.get("limit", 20)))]
        if body.get("collapse") and hits:  # the first result has two near-identical copies
            hits[0]["folded"] = [
                {
                    "id": f"copy{j}",
                    "path": f"/photos/{name}0 copy{j}.png",
                    "score": 0.89 - j / 100,
                    "image_url": f"/images/copy{j}",
                    "thumbnail_url": f"/images/copy{j}/thumbnail",
                }
                for j in (1, 2)
            ]
            hits[0]["duplicates"] = ["copy1", "copy2"]
        for h in hits:
            h["name_match"] = body.get("lexical_weight", 0.5) > 0 and h["id"] == "id1"
            if body.get("explain"):
                terms = [{"text": body["text"]}] if body.get("text") else []
                terms += [{"image_id": body["image_id"]}] if body.get("image_id") else []
                h["explanation"] = [
                    {
                        "term": t.get("text")
                        or (f"image {t['image_id']}" if "image_id" in t else f"upload {t['upload_ref']}"),
                        "weight": t.get("weight", 1.0),
                        "cosine": 0.3,
                        "contribution": 0.3 * t.get("weight", 1.0),
                    }
                    for t in terms + body.get("terms", [])
                ]
        cutoff = {
            "mode": "auto",
            "threshold": 0.12,
            "z": 3.1,
            "background_mean": 0.0,
            "background_std": 0.04,
            "knee": False,
            "kept": min(self.matches, 1000),
            "params": {},
        }
        return self._json(
            SearchResponse, {"results": hits, "took_ms": 12.5, "notes": [], "cutoff": cutoff if auto else None}
        )

    @staticmethod
    def _json(model, body: dict) -> httpx.Response:
        return httpx.Response(200, json=model.model_validate(body).model_dump(mode="json"))


def parse_multipart(request: httpx.Request) -> dict:
    """The fields of a multipart/form-data body; a file field's value is its bytes."""
    from email.parser import BytesParser
    from email.policy import HTTP

    header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(header + request.content)
    fields = {"files": []}  # the file fields, in order, as (file name, bytes)
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            fields["files"].append((part.get_filename(), payload))
        else:
            fields[name] = payload.decode()
    return fields


@pytest.fixture
def fake(monkeypatch):
    def install(api):
        monkeypatch.setattr(api_client, "TRANSPORT", httpx.MockTransport(api))
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


def test_while_the_server_indexes_the_page_says_how_far_it_is_instead_of_an_empty_index(fake):
    """`imgsearch up ~/Pictures` opens the page while the first index runs: it shows the job's progress, not
    advice to run `imgsearch index`; once photos are searchable it shows both the progress and the search."""
    api = fake(FakeApi(count=0))
    api.unfinished = [{"job_id": "j1", "kind": "index", "state": "running", "paths": ["/home/me/Pictures"]}]
    app = run()
    assert not app.exception
    assert "looking for photos in /home/me/Pictures" in texts(app) and "imgsearch index" not in texts(app)
    api.unfinished[0].update(total=1200, processed=300)
    api.count = 300
    app = run("cat")
    assert "Indexing 1,200 photos: 300 done" in texts(app)
    assert [b["text"] for b in api.searches] == ["cat"] and len(app.get("image")) == 3
    api.unfinished = [{"job_id": "t1", "kind": "tag", "state": "running", "label_set": "pets"}]
    assert "Indexing" not in texts(run())  # a tag job is not indexing


def test_a_watchers_run_says_how_many_new_photos_it_indexes(fake):
    api = FakeApi()
    api.unfinished = [
        {"job_id": "w1", "kind": "watch", "state": "running", "paths": ["/photos"], "processed": 2, "total": 12}
    ]
    fake(api)
    app = run()
    assert not app.exception
    assert "Indexing 12 new photos: 2 done" in app.info[0].value


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
    assert "Nothing in the collection stands out" in app.warning[0].value  # "only matches" is on
    app.toggle(key="only_matches").set_value(False).run()
    assert "No results" in app.warning[0].value


def test_only_matches_is_on_by_default_and_says_where_results_stop(fake):
    api = fake(FakeApi(results=9, matches=3))
    app = run("a red bicycle")
    assert api.searches[-1]["cutoff"] == "auto" and api.searches[-1]["explain"] is True
    assert "3 results in 12 ms · only matches: 3 stand out from the collection" in texts(app)
    assert not any(b.label == "Load more" for b in app.button)  # the cutoff kept no more than these
    app.toggle(key="only_matches").set_value(False).run()
    assert "cutoff" not in api.searches[-1] and len(app.get("image")) == 9


def test_when_nothing_stands_out_the_closest_can_be_shown_anyway(fake):
    api = fake(FakeApi(results=4, matches=0))
    app = run("a unicorn")
    assert "Nothing in the collection stands out" in app.warning[0].value and not app.get("image")
    next(b for b in app.button if b.label == "Show the closest anyway").click().run()
    assert not app.exception
    assert "cutoff" not in api.searches[-1] and api.searches[-1]["text"] == "a unicorn"
    assert len(app.get("image")) == 4 and app.toggle(key="only_matches").value is False


def test_near_duplicates_are_folded_and_plus_n_similar_expands_them(fake):
    api = fake(FakeApi(results=3))
    app = run("cats")
    assert api.searches[-1]["collapse"] is True  # on by default
    assert "3 results in 12 ms · only matches: 3 stand out from the collection · 2 near-duplicates folded" in texts(app)
    similar = next(b for b in app.button if b.key == "similar-id0")
    assert similar.label == "+2 similar" and not any(b.key == "similar-id1" for b in app.button)
    assert "cat0 copy1.png" not in texts(app) and len(app.get("image")) == 3
    api.fetched.clear()
    similar.click().run()
    assert not app.exception
    assert "**0.880** · cat0 copy1.png" in texts(app) and "**0.870** · cat0 copy2.png" in texts(app)
    assert sorted(api.fetched) == [
        "/images/copy1/thumbnail",
        "/images/copy2/thumbnail",
        *sorted(f"/images/id{i}/thumbnail" for i in range(3)),
    ]
    assert len(app.get("image")) == 5 and next(b for b in app.button if b.key == "similar-id0").label == "−2 similar"
    next(b for b in app.button if b.key == "similar-id0").click().run()
    assert "cat0 copy1.png" not in texts(app)
    app.toggle(key="fold").set_value(False).run()
    assert "collapse" not in api.searches[-1] and not any(b.key == "similar-id0" for b in app.button)


def test_the_query_builder_sends_words_and_results_with_their_sign_and_weight(fake):
    api = fake(FakeApi())
    app = run("a beach")
    assert "terms" not in api.searches[-1]
    app.text_input(key="add_words").input("sunset").run()
    assert api.searches[-1]["terms"] == [{"text": "sunset", "weight": 1.0}]
    assert app.text_input(key="add_words").value == ""  # ready for the next term
    next(b for b in app.button if b.key == "add-id2").click().run()  # "Add to query" under a result
    assert api.searches[-1]["terms"] == [{"text": "sunset", "weight": 1.0}, {"image_id": "id2", "weight": 1.0}]
    first, second = (term["key"] for term in app.session_state["terms"])
    app.radio(key=f"sign-{first}").set_value("−").run()
    app.slider(key=f"weight-{second}").set_value(2.5).run()
    sent = api.searches[-1]
    assert sent["text"] == "a beach"
    assert sent["terms"] == [{"text": "sunset", "weight": -1.0}, {"image_id": "id2", "weight": 2.5}]
    app.button(key=f"remove-term-{first}").click().run()
    assert api.searches[-1]["terms"] == [{"image_id": "id2", "weight": 2.5}]
    # The builder alone is a query too.
    app.text_input(key="query_text").input("").run()
    assert "text" not in api.searches[-1] and api.searches[-1]["terms"] == [{"image_id": "id2", "weight": 2.5}]
    next(b for b in app.button if b.key == "like-id1").click().run()  # "more like this" starts afresh
    assert "terms" not in api.searches[-1] and api.searches[-1]["image_id"] == "id1"


def test_uploaded_terms_go_with_the_example_image_and_are_named_by_position(fake, monkeypatch):
    api = fake(FakeApi())
    example, added = jpeg(), jpeg()[:-2] + b"\xff\xd9"

    class Upload:
        name, file_id = "example.jpg", "upload-1"

        def getvalue(self):
            return example

    monkeypatch.setattr(st, "file_uploader", lambda *args, **kwargs: Upload())
    app = AppTest.from_file(APP, default_timeout=30)
    app.session_state["terms"] = [
        {"key": 7, "kind": "upload", "value": "pool.jpg", "label": "pool.jpg", "data": added, "thumbnail_url": None}
    ]
    app.run()
    app.radio(key="sign-7").set_value("−").run()
    sent = api.uploads[-1]
    assert sent["files"] == [("example.jpg", example), ("pool.jpg", added)]
    assert sent["terms"] == [{"upload_ref": "1", "weight": -1.0}]  # the unnamed first upload is the example


def test_explanations_show_on_hover_and_in_the_preview(fake):
    fake(FakeApi())
    app = run("a cat")
    app.text_input(key="add_words").input("on a sofa").run()
    app.slider(key=f"weight-{app.session_state['terms'][0]['key']}").set_value(0.5).run()
    caption = next(c for c in app.caption if "cat0.jpg" in c.value)
    assert (
        caption.proto.help
        == "a cat: cosine +0.300 × weight +1 = +0.300  \non a sofa: cosine +0.300 × weight +0.5 = +0.150"
    )
    next(b for b in app.button if b.key == "view-id0").click().run()
    assert "**Why it matched**" in texts(app)
    table = app.dataframe[0].value
    assert list(table["term"]) == ["a cat", "on a sofa"] and list(table["share of score"]) == [0.3, 0.15]
    assert "names" not in table.columns  # no names-only term, no empty column
    assert "cat0 copy1.png" in texts(app)  # the images folded into it are listed in the preview
    next(b for b in app.button if b.key == "add-id2").click().run()
    caption = next(c for c in app.caption if "cat0.jpg" in c.value)
    assert "image cat2.jpg: cosine +0.300 × weight +1 = +0.300" in caption.proto.help  # by name, not by id


def test_the_words_toggle_is_on_by_default_and_off_sends_the_picture_alone_and_variety_reaches_the_api(fake):
    api = fake(FakeApi())
    app = run("paris 2019")
    assert "lexical_weight" not in api.searches[-1] and "diversity" not in api.searches[-1]  # the API's default
    assert app.toggle(key="names").value is True
    assert "**0.890** · cat1.jpg · 🔤 word match" in texts(app)
    app.toggle(key="names").set_value(False).run()
    app.slider(key="variety").set_value(0.3).run()
    assert api.searches[-1]["lexical_weight"] == 0.0 and api.searches[-1]["diversity"] == pytest.approx(0.3)
    assert "word match" not in texts(app)


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
    assert api.searches[-1]["filter"] == {
        "taken_after": "2019-06-01",
        "taken_before": "2019-07-01",
        "formats": ["JPEG", "HEIF"],
        "cameras": ["X100V"],
    }
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


def test_results_show_tag_chips_and_the_sidebar_filters_by_tag(fake):
    api = fake(FakeApi())
    app = run("a dog")
    chips = [m.value for m in app.markdown if "badge" in m.value]
    assert chips == [":violet-badge[dog] :violet-badge[beach  x  http //evil]"]  # no link reaches the page
    tag_filter = app.multiselect(key="tag_filter")
    assert tag_filter.options == ["dog (7)", "beach (2)"]
    tag_filter.set_value(["dog", "beach"]).run()
    assert api.searches[-1]["filter"] == {"tags_any": ["dog", "beach"]}
    app.toggle(key="all_tags").set_value(True).run()
    assert api.searches[-1]["filter"] == {"tags_all": ["dog", "beach"]}


def test_the_label_sets_page_tags_shows_counts_and_opens_a_labels_top_images(fake):
    api = fake(FakeApi())
    api.label_sets = [
        {"name": "old", "labels": 2, "mode": "cosine", "top": 3, "min_score": 0.25, "templates": ["a photo of a {}."]}
    ]
    app = AppTest.from_file(APP, default_timeout=30).run()
    app.radio(key="view").set_value("Label sets").run()
    assert "**old** · 2 labels · cosine · top 3 · min score 0.25" in texts(app)
    app.text_input[0].input("pets")
    app.text_area[0].input("dog\n# a comment\n\ncat\n")
    app.button[1].click().run()  # the form's submit button (the first is "Remove")
    assert api.label_requests == [
        {"name": "pets", "labels": ["dog", "cat"], "top": 3, "mode": "cosine", "templates": ["a photo of a {}."]}
    ]
    assert api.job_polls == 2
    table = app.dataframe[0].value
    assert list(table["label"]) == ["dog", "cat"] and list(table["images"]) == [2, 0]
    app.selectbox(key="open_label").set_value("dog").run()
    assert api.searches[-1]["filter"] == {"tags_any": ["dog"]} and api.searches[-1]["text"] == "a photo of a dog."
    assert len(app.get("imgs")) or api.fetched  # the label's images are shown
    app.button[0].click().run()
    assert api.deleted == ["old"]


def test_the_view_switch_goes_to_label_sets_and_back_and_the_relevance_switches_outlive_it(fake):
    api = fake(FakeApi())
    app = run("cats")
    app.toggle(key="names").set_value(False).run()
    app.radio(key="view").set_value("Label sets").run()
    assert not app.exception and "Label sets" in [h.value for h in app.header]
    assert not app.toggle and app.radio(key="view").value == "Label sets"
    app.radio(key="view").set_value("Search").run()
    assert not app.exception and not app.header and app.toggle(key="names").value is False
    app.text_input(key="query_text").input("dogs").run()
    assert api.searches[-1]["text"] == "dogs" and api.searches[-1]["lexical_weight"] == 0.0


def test_file_names_are_shown_as_they_are_never_as_markup(fake):
    api = fake(FakeApi(results=1))
    api.name = "[click](evil.html)_*x*"
    app = run("cats")
    caption = next(c.value for c in app.caption if "click" in c.value)
    assert caption.startswith(
        "**0.900** · \\[click\\](evil.html)\\_\\*x\\*0.jpg ·"
    )  # escaped, so no link and no italics


# The search request, built by a pure function from what the Search page shows (imgsearch.ui.search_request) ------

DEFAULTS = {"limit": 20, "cutoff": "auto", "collapse": True, "explain": True}  # what a fresh page adds to any query


def test_a_typed_query_alone_is_sent_with_the_pages_defaults():
    body = search_body(SearchState(text="  a red bicycle "))
    assert body == {"text": "a red bicycle", **DEFAULTS}
    request = SearchRequest.model_validate(body)  # what the API accepts
    assert request.text == "a red bicycle" and request.explain and request.limit == 20
    assert upload_files(SearchState(text="a red bicycle")) == []  # no files: POST /search


def test_negative_text_and_the_options_go_in_the_body():
    body = search_body(
        SearchState(
            text="a dog on a beach",
            negative=" people ",
            top_k=35,
            min_score=0.25,
            newest=True,
            only_matches=False,
            fold=False,
            names=False,
            variety=0.3,
        )
    )
    assert body == {
        "text": "a dog on a beach",
        "negative_text": "people",
        "limit": 35,
        "min_score": 0.25,
        "sort": "newest",
        "lexical_weight": 0.0,
        "diversity": 0.3,
        "explain": True,
    }
    SearchRequest.model_validate(body)
    blank = search_body(SearchState(text="x", negative="   ", min_score=-1.0))  # the slider at its lowest
    assert "negative_text" not in blank and "min_score" not in blank


def test_the_sidebar_filters_become_the_requests_filter():
    state = SearchState(
        text="beach",
        path_prefix="/photos/2024/",
        taken_after=date(2019, 6, 1),
        taken_before=date(2019, 7, 1),
        formats=["JPEG", "HEIF"],
        camera=" X100V ",
        tags=["dog"],
        has_text=True,
    )
    body = search_body(state)
    assert body["filter"] == {
        "path_prefix": "/photos/2024/",
        "taken_after": "2019-06-01",
        "taken_before": "2019-07-01",
        "formats": ["JPEG", "HEIF"],
        "cameras": ["X100V"],
        "tags_any": ["dog"],
        "has_text": True,
    }
    assert SearchRequest.model_validate(body).filter is not None
    every_tag = search_body(SearchState(text="beach", tags=["dog", "beach"], all_tags=True))
    assert every_tag["filter"] == {"tags_all": ["dog", "beach"]}
    assert "filter" not in search_body(SearchState(text="beach", camera="  ", all_tags=True))


def test_more_like_this_sends_the_image_id_and_replaces_the_example_image():
    assert search_body(SearchState(more_like_id="id2")) == {"image_id": "id2", **DEFAULTS}
    SearchRequest.model_validate(search_body(SearchState(more_like_id="id2")))
    state = SearchState(more_like_id="id2", example=("query.jpg", b"jpeg"))
    assert upload_files(state) == [] and search_body(state)["image_id"] == "id2"


def test_an_example_image_is_sent_as_a_file_with_the_query():
    state = SearchState(text="at night", example=("query.jpg", b"jpeg"))
    assert upload_files(state) == [("query.jpg", b"jpeg")]
    body = search_body(state)
    assert body == {"text": "at night", **DEFAULTS}
    SearchRequest.model_validate(body, context={"has_upload": True})


def test_query_builder_terms_carry_their_signed_weights_and_uploads_their_position():
    terms = [
        {"kind": "text", "value": "sunset", "data": None, "weight": -1.0},
        {"kind": "image", "value": "id2", "data": b"thumb", "weight": 2.5},
        {"kind": "upload", "value": "pool.jpg", "data": b"pool", "weight": 0.5},
    ]
    body = search_body(SearchState(text="a beach", terms=terms))
    assert body["terms"] == [
        {"text": "sunset", "weight": -1.0},
        {"image_id": "id2", "weight": 2.5},
        {"upload_ref": "0", "weight": 0.5},
    ]  # the only file sent
    assert upload_files(SearchState(terms=terms)) == [("pool.jpg", b"pool")]
    SearchRequest.model_validate(body, context={"has_upload": True})
    with_example = SearchState(example=("example.jpg", b"ex"), terms=terms[2:])
    assert upload_files(with_example) == [("example.jpg", b"ex"), ("pool.jpg", b"pool")]
    assert search_body(with_example)["terms"] == [{"upload_ref": "1", "weight": 0.5}]  # the example comes first
    assert "terms" not in search_body(SearchState(text="a beach"))


def test_load_more_asks_for_every_page_shown_within_the_apis_limit():
    assert search_body(SearchState(text="cats", pages=2))["limit"] == 40
    assert search_body(SearchState(text="cats", top_k=100, pages=3))["limit"] == 200
    assert result_limit(35, 1) == 35


def test_the_page_sends_what_search_body_builds(fake):
    api = fake(FakeApi())
    run("cats on a sofa")
    assert api.searches[-1] == search_body(SearchState(text="cats on a sofa"))


def test_the_text_read_is_shown_with_the_query_words_marked_inside_longer_words_and_never_as_markup():
    from imgsearch.ui.components import highlighted

    shown = highlighted("DEPARTURES\nGATEB17 *now*", ["b17", "x"])
    assert shown == "DEPARTURES  \nGATE:orange-background[**B17**] \\*now\\*"
    assert highlighted("[a](evil)", []) == "\\[a\\](evil)"
