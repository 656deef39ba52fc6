"""The search API through `with TestClient(app)` (lifespan runs) on real Milvus Lite.

Every test that uses `client` runs twice: with the in-memory vector copy answering searches (Milvus search is
made to fail, so a silent fall-back would be caught), and with the copy off, Milvus answering.
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgsearch.indexer.runner import run_index
from imgsearch.search_api.main import create_app
from tests.support.api import CopyAnsweringClient, milvus_search_forbidden
from tests.support.photos import write_exif_photo, write_photo


@pytest.fixture
def indexed(photo_dir, settings, encoder):
    from imgsearch.store import MilvusStore

    store = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, store)
    store.close()
    return photo_dir


@pytest.fixture(params=["vector-copy", "milvus"])
def client(request, settings, encoder, indexed):
    if request.param == "milvus":
        with TestClient(create_app(settings.model_copy(update={"vector_cache": "off"}), encoder=encoder)) as client:
            assert client.get("/health").json()["vector_cache"] == "off"
            yield client
        return
    with CopyAnsweringClient(create_app(settings.model_copy(update={"vector_cache": "on"}), encoder=encoder)) as client:
        client.app.state.store.search = milvus_search_forbidden
        yield client


def ids_by_name(client) -> dict[str, str]:
    store = client.app.state.store
    return {row["path"].rsplit("/", 1)[1]: row["id"] for row in store.iter_metadata()}


def test_health_reports_model_dimension_and_count(client, settings):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["count"] == 10 and body["dim"] == 16
    assert body["model"] == settings.model
    assert body["runs"] == body["text_runs"] == "torch fp32"  # the test model's backend and precision (conftest)


def test_the_server_log_says_what_runs_the_model(settings, encoder, indexed, caplog):
    with caplog.at_level(logging.INFO, logger="uvicorn.error"), TestClient(create_app(settings, encoder=encoder)):
        pass
    said = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert f"imgsearch: {settings.model} runs images as torch fp32; texts as torch fp32" in said


def test_text_search_returns_ranked_results_with_urls(client):
    started = time.perf_counter()
    # the picture alone: with words (the default), "photo" also matches every file name and ranks by fusion
    response = client.post("/search", json={"text": "a photo of blocks", "limit": 5, "lexical_weight": 0})
    wall_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 5 and 0 < body["took_ms"] <= wall_ms
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]
    assert first["image_url"] == f"/images/{first['id']}" and first["thumbnail_url"].startswith(first["image_url"])
    assert (first["width"], first["height"]) in {(96, 64)}


def test_more_like_this_returns_the_image_itself_first(client):
    image_id = ids_by_name(client)["photo3.png"]
    body = client.post("/search", json={"image_id": image_id, "limit": 3}).json()
    assert body["results"][0]["id"] == image_id
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_uploading_an_indexed_image_finds_it_first_with_score_near_one(client, indexed):
    data = (indexed / "trip" / "photo8.jpg").read_bytes()
    response = client.post("/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, data={"limit": "3"})
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert top["path"].endswith("photo8.jpg") and top["score"] >= 0.99


def test_upload_combined_with_text_still_returns_results(client, indexed):
    data = (indexed / "photo1.png").read_bytes()
    response = client.post("/search/image", files={"file": ("q.png", data)}, data={"text": "blocks", "limit": "4"})
    assert response.status_code == 200 and len(response.json()["results"]) == 4


def stored_vectors(client) -> dict[str, np.ndarray]:
    store = client.app.state.store
    rows = store.get([row["id"] for row in store.iter_metadata()], with_vectors=True)
    return {row_id: np.asarray(row["vector"], dtype=np.float32) for row_id, row in rows.items()}


def test_negative_text_pulls_results_away_from_it(client, encoder):
    positive, negative = encoder.embed_texts(["red", "blue squares"]).vectors
    vectors = stored_vectors(client)
    nearest_to_negative = max(vectors, key=lambda i: float(vectors[i] @ negative))
    plain = client.post("/search", json={"text": "red", "limit": 10}).json()["results"]
    pulled = client.post(
        "/search", json={"text": "red", "negative_text": "blue squares", "negative_weight": 2.0, "limit": 10}
    ).json()["results"]
    expected = positive - 2.0 * negative
    expected /= np.linalg.norm(expected)
    for result in pulled:  # each score is the cosine to text minus twice the negative, renormalised
        assert result["score"] == pytest.approx(float(vectors[result["id"]] @ expected), abs=1e-4)
    rank = {
        name: [r["id"] for r in results].index(nearest_to_negative)
        for name, results in (("plain", plain), ("pulled", pulled))
    }
    assert rank["pulled"] > rank["plain"]  # the image most like "blue squares" falls down the list


def test_an_upload_takes_every_field_that_search_takes(client, indexed):
    data = (indexed / "trip" / "photo6.jpg").read_bytes()

    def upload(**query):
        return client.post("/search/image", files={"file": ("q.jpg", data)}, data={"query": json.dumps(query)})

    trip = str(indexed / "trip")
    in_trip = upload(limit=50, filter={"path_prefix": trip}).json()["results"]
    assert sorted(r["path"] for r in in_trip) == sorted(str(p) for p in (indexed / "trip").iterdir())
    ranked = upload(limit=50).json()["results"]
    cut = (ranked[2]["score"] + ranked[3]["score"]) / 2
    assert [r["id"] for r in upload(min_score=cut).json()["results"]] == [r["id"] for r in ranked[:3]]
    plain = {r["id"]: r["score"] for r in ranked}
    pushed = {r["id"]: r["score"] for r in upload(limit=50, negative_text="red", negative_weight=2).json()["results"]}
    assert plain.keys() == pushed.keys() and plain != pushed
    assert upload(bogus=1).status_code == 422
    for broken in ("{not json", "[" * 40_000):  # nested past Python's recursion limit: was a 500
        bad = client.post("/search/image", files={"file": ("q.jpg", data)}, data={"query": broken})
        assert bad.status_code == 422 and "not valid JSON" in bad.json()["detail"]


def test_offset_pages_through_the_same_ranking(client):
    everything = client.post("/search", json={"text": "x", "limit": 10}).json()["results"]
    page2 = client.post("/search", json={"text": "x", "limit": 3, "offset": 3}).json()["results"]
    assert [r["id"] for r in page2] == [r["id"] for r in everything[3:6]]


def test_min_score_drops_weaker_results(client):
    image_id = ids_by_name(client)["photo0.png"]
    body = client.post("/search", json={"image_id": image_id, "limit": 10, "min_score": 0.999}).json()
    assert [r["id"] for r in body["results"]] == [image_id]


def test_filters_by_path_prefix_and_size(client, indexed, settings, encoder):
    trip = client.post(
        "/search", json={"text": "x", "limit": 50, "filter": {"path_prefix": str(indexed / "trip") + "/"}}
    )
    assert {r["path"].rsplit("/", 1)[1] for r in trip.json()["results"]} == {f"photo{i}.jpg" for i in range(6, 10)}
    wide = client.post("/search", json={"text": "x", "limit": 50, "filter": {"min_width": 97}})
    assert wide.json()["results"] == []
    sized = client.post("/search", json={"text": "x", "limit": 50, "filter": {"max_width": 96, "min_height": 64}})
    assert len(sized.json()["results"]) == 10
    for bounds, count in (({"min_height": 64, "max_height": 64}, 10), ({"max_height": 63}, 0), ({"min_height": 65}, 0)):
        assert len(client.post("/search", json={"text": "x", "limit": 50, "filter": bounds}).json()["results"]) == count


def test_path_prefix_with_underscore_and_quotes_is_literal(client, tmp_path, settings, encoder):
    odd = tmp_path / "photos" / 'a_b "q"\nline\\2\t'
    write_photo(odd / "x.png", seed=77)
    write_photo(tmp_path / "photos" / "aXb" / "y.png", seed=78)
    store = client.app.state.store
    run_index([str(tmp_path / "photos")], settings, encoder, store)
    body = client.post("/search", json={"text": "x", "limit": 50, "filter": {"path_prefix": str(odd)}}).json()
    assert [r["path"] for r in body["results"]] == [str(odd / "x.png")]


@pytest.fixture
def holiday(client, tmp_path, settings, encoder):
    """Three camera JPEGs beside the ten plain photos (dated by their file times, which are now)."""
    trip = tmp_path / "photos" / "holiday"
    write_exif_photo(
        trip / "beach.jpg",
        seed=50,
        taken="2019:06:01 09:30:00",
        make="FUJIFILM",
        model="X100V",
        gps=("N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)),
    )
    write_exif_photo(trip / "dinner.jpg", seed=51, taken="2019:06:01 21:00:00", make="FUJIFILM", model="X100V")
    write_exif_photo(trip / "train.jpg", seed=52, taken="2018:12:24 08:00:00", make="Apple", model="iPhone 12")
    run_index([str(tmp_path / "photos")], settings, encoder, client.app.state.store)
    return trip


def names(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["path"].rsplit("/", 1)[1] for r in response.json()["results"]]


def test_photos_are_found_by_when_they_were_taken_their_format_and_camera(client, holiday):
    def search(**bounds):
        return set(names(client.post("/search", json={"text": "x", "limit": 50, "filter": bounds})))

    assert search(taken_after="2019-06-01", taken_before="2019-06-02") == {"beach.jpg", "dinner.jpg"}
    assert search(taken_after="2019-06-01T12:00:00", taken_before="2019-06-02") == {"dinner.jpg"}
    assert search(taken_before="2019-06-01") == {"train.jpg"}  # the before bound is exclusive
    assert search(cameras=["iPhone 12"]) == {"train.jpg"}
    assert search(formats=["PNG"]) == {f"photo{i}.png" for i in range(6)}
    assert search(formats=["JPEG"], cameras=["X100V", "iPhone 12"]) == {"beach.jpg", "dinner.jpg", "train.jpg"}
    assert search(formats=["GIF"]) == set()
    beach = next(
        r
        for r in client.post("/search", json={"text": "x", "limit": 50}).json()["results"]
        if r["path"].endswith("beach.jpg")
    )
    assert (
        beach["taken_at"],
        beach["taken_at_source"],
        beach["format"],
        beach["camera_make"],
        beach["camera_model"],
        beach["gps"],
    ) == ("2019-06-01T09:30:00", "exif", "JPEG", "FUJIFILM", "X100V", "48.858056,2.294444")
    plain = next(
        r
        for r in client.post("/search", json={"text": "x", "limit": 50}).json()["results"]
        if r["path"].endswith("photo0.png")
    )
    assert plain["taken_at_source"] == "mtime" and plain["camera_model"] == "" and plain["format"] == "PNG"


def test_newest_first_orders_the_best_matches_by_when_they_were_taken(client, holiday):
    body = {"text": "x", "limit": 2, "sort": "newest", "filter": {"path_prefix": str(holiday) + "/"}}
    assert names(client.post("/search", json=body)) == ["dinner.jpg", "beach.jpg"]
    assert names(client.post("/search", json={**body, "offset": 2})) == ["train.jpg"]
    everything = names(client.post("/search", json={"text": "x", "limit": 20, "sort": "newest"}))
    assert everything[-3:] == ["dinner.jpg", "beach.jpg", "train.jpg"]  # the plain photos are dated now


def test_original_and_thumbnail_by_id(client, indexed, settings):
    image_id = ids_by_name(client)["photo6.jpg"]
    original = client.get(f"/images/{image_id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == (indexed / "trip" / "photo6.jpg").read_bytes()
    thumb = client.get(f"/images/{image_id}/thumbnail?size=64")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    assert list(settings.thumbnail_dir.glob(f"{image_id}-*-64.jpg"))  # cached for the next request
    assert client.get(f"/images/{image_id}/thumbnail?size=64").content == thumb.content
    # Sizes snap up to a few buckets, so a client cannot make the cache hold one file per pixel size.
    assert client.get(f"/images/{image_id}/thumbnail?size=33").content == thumb.content
    assert client.get(f"/images/{image_id}/thumbnail?size=100").status_code == 200
    assert sorted(p.name.rsplit("-", 1)[1] for p in settings.thumbnail_dir.glob(f"{image_id}-*.jpg")) == [
        "128.jpg",
        "64.jpg",
    ]


def test_image_whose_file_was_deleted_gives_404_not_500(client, indexed):
    image_id = ids_by_name(client)["photo2.png"]
    (indexed / "photo2.png").unlink()
    assert client.get(f"/images/{image_id}").status_code == 404
    assert client.get(f"/images/{image_id}/thumbnail").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": "   "},
        {},
        {"negative_text": "x"},
        {"text": "x", "limit": 0},
        {"text": "x", "limit": 201},
        {"text": "x", "offset": -1},
        {"text": "x", "bogus": 1},
    ],
)
def test_bad_search_requests_get_422_with_a_message(client, body):
    response = client.post("/search", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_unknown_ids_get_404(client):
    missing = client.post("/search", json={"image_id": "0000000000000000"})
    assert missing.status_code == 404 and missing.json()["detail"] == "no indexed image with id '0000000000000000'"
    assert client.get("/images/0000000000000000").status_code == 404
    assert client.get("/images/0000000000000000/thumbnail").status_code == 404
    assert client.get("/index/nope").status_code == 404


def test_long_text_is_truncated_with_a_note(client):
    body = client.post("/search", json={"text": "bicycle " * 200}).json()
    assert body["results"] and "truncated" in body["notes"][0]


def test_upload_that_is_not_an_image_gets_415(client):
    response = client.post("/search/image", files={"file": ("x.jpg", b"plain text, not a picture")})
    assert response.status_code == 415 and "not a recognised" in response.json()["detail"]


def test_truncated_or_bomb_upload_gets_422(client, settings):
    data = io.BytesIO()
    Image.new("RGB", (300, 300), (9, 9, 9)).save(data, "JPEG")
    truncated = data.getvalue()[:400]
    assert client.post("/search/image", files={"file": ("t.jpg", truncated)}).status_code == 422
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")
    response = client.post("/search/image", files={"file": ("bomb.png", bomb.getvalue())})
    assert response.status_code == 422 and "pixels" in response.json()["detail"]


def test_oversized_upload_gets_413_also_without_content_length(settings, encoder, indexed):
    small = settings.model_copy(update={"max_upload_bytes": 100_000})
    with TestClient(create_app(small, encoder=encoder)) as client:
        big = np.random.default_rng(0).bytes(400_000)
        response = client.post("/search/image", files={"file": ("big.jpg", big)})
        assert response.status_code == 413 and "100,000 bytes" in response.json()["detail"]

        def chunks():  # a generator body is sent chunked, with no Content-Length
            for _ in range(40):
                yield b"x" * 10_000

        response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert client.get("/health").json()["count"] == 10  # nothing lost


def test_api_key_is_required_everywhere_but_health(settings, encoder, indexed):
    keyed = settings.model_copy(update={"api_key": "s3cret"})
    with TestClient(create_app(keyed, encoder=encoder)) as client:
        assert client.get("/health").json() == {"status": "ok"}  # alive, and nothing about the collection
        assert client.get("/health", headers={"X-API-Key": "s3cret"}).json()["count"] == 10
        for page in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(page).status_code == 401, page
            assert client.get(page, headers={"X-API-Key": "s3cret"}).status_code == 200, page
        assert "/search/image" in client.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()["paths"]
        assert client.post("/search", json={"text": "x"}).status_code == 401
        assert client.post("/search", json={"text": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/search", json={"text": "x"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/search", json={"text": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/images/abc").status_code == 401


def test_cors_is_closed_by_default_and_opens_for_configured_origins(settings, encoder, indexed):
    with TestClient(create_app(settings, encoder=encoder)) as client:
        response = client.get("/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in response.headers
    opened = settings.model_copy(update={"cors_origins": ["http://ui.example"]})
    with TestClient(create_app(opened, encoder=encoder)) as client:
        response = client.get("/health", headers={"Origin": "http://ui.example"})
        assert response.headers["access-control-allow-origin"] == "http://ui.example"


def test_index_job_makes_new_images_searchable_without_restart(client, tmp_path):
    new = tmp_path / "new-batch"
    for i in range(3):
        write_photo(new / f"n{i}.png", seed=500 + i)
    response = client.post("/index", json={"paths": [str(new)]})
    assert response.status_code == 202
    job_id = response.json()["job_id"]

    for _ in range(200):
        job = client.get(f"/index/{job_id}").json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done" and job["report"]["embedded"] == 3 and job["processed"] == 3
    assert client.get("/health").json()["count"] == 13
    data = (new / "n1.png").read_bytes()
    top = client.post("/search/image", files={"file": ("n1.png", data)}).json()["results"][0]
    assert top["path"] == str(new / "n1.png")


def test_index_refuses_paths_outside_the_allowed_roots(client, tmp_path):
    assert client.post("/index", json={"paths": ["/etc"]}).status_code == 403
    # Outside the roots, an existing and a missing path get the same answer: nothing tells which exist.
    missing = client.post("/index", json={"paths": ["/etc/no-such-folder-here"]})
    assert missing.status_code == 403 and "outside the allowed roots" in missing.json()["detail"]
    assert client.post("/index", json={"paths": [str(tmp_path / ".." / "..")]}).status_code == 403
    assert client.post("/index", json={"paths": [str(tmp_path / "missing")]}).status_code == 404
    assert client.post("/index", json={"paths": []}).status_code == 422
