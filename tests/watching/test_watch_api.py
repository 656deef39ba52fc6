"""The API's watcher (`imgsearch serve --watch`) through the real app: its runs share the job queue, GET /watch
says what it does, and a photo copied in is found by a search."""

from __future__ import annotations

import shutil
import time

import pytest
from fastapi.testclient import TestClient

from imgsearch.search_api.main import create_app
from tests.support.photos import write_photo
from tests.support.watching import wait_for

pytestmark = pytest.mark.slow


def test_serve_watch_catches_up_reports_its_roots_and_a_copied_photo_is_found(settings, encoder, tmp_path):
    library = tmp_path / "library"
    for i in range(3):
        write_photo(library / f"p{i}.jpg", seed=i)
    outside = write_photo(tmp_path / "camera" / "new.jpg", seed=50)
    quick = settings.model_copy(update={"watch_settle_seconds": 0.5, "vector_cache": "off"})
    with TestClient(create_app(quick, encoder=encoder, watch_roots=[str(library)])) as client:
        status = wait_for(lambda: (s := client.get("/watch").json())["runs"] >= 1 and s, 60, "the catch-up")
        root = status["roots"][0]
        assert root["path"] == str(library) and root["mode"] == "events" and root["last_reconcile"]
        assert status["last_report"]["kind"] == "catch-up" and status["last_report"]["embedded"] == 3
        assert status["rescan_minutes"] == 60

        shutil.copy(outside, library / "new.jpg")
        wait_for(lambda: client.get("/health").json()["count"] == 4, 15, "the copy to be indexed")
        found = client.post("/search/image", files={"file": ("q.jpg", outside.read_bytes())}, data={"limit": "1"})
        assert found.json()["results"][0]["path"] == str(library / "new.jpg")
        assert client.get("/watch").json()["last_report"]["kind"] == "changes"


def test_watch_runs_are_jobs_of_the_one_queue_and_listed_while_they_run(settings, encoder, tmp_path):
    library = tmp_path / "library"
    for i in range(24):
        write_photo(library / f"p{i:02d}.png", seed=i)
    quick = settings.model_copy(update={"watch_settle_seconds": 0.5, "vector_cache": "off"})
    with TestClient(create_app(quick, encoder=Slow(encoder), watch_roots=[str(library)])) as client:
        seen = wait_for(lambda: [j for j in client.get("/index").json() if j["kind"] == "watch"], 60, "a watch job")
        assert seen[0]["paths"] == [str(library)]
        wait_for(lambda: client.get("/watch").json()["runs"] >= 1, 60, "the catch-up")
        assert not [job for job in client.get("/index").json() if job["kind"] == "watch"]


def test_an_api_that_watches_nothing_says_so(settings, encoder):
    with TestClient(create_app(settings, encoder=encoder)) as client:
        assert client.get("/watch").json()["roots"] == []


class Slow:
    """The tiny model, a quarter of a second slower per batch of images: a run lasts long enough to be seen."""

    def __init__(self, encoder):
        self._encoder = encoder

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def embed_images(self, images):
        time.sleep(0.25)
        return self._encoder.embed_images(images)
