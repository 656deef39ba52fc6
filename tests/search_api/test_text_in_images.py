"""Text inside images is searchable (issue 36), through the real API over a corpus of rendered pictures (a receipt,
a sign over a photo, screenshots, a poster, a number plate; rotated, blurred, light on dark) and photos without
text, indexed by `run_index` with the default IMGSEARCH_OCR=on and the tiny CLIP, which reads no text at all:
whatever finds a picture by its words here is the text stage and the fusion."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from imgsearch.indexer.runner import run_index
from imgsearch.search_api.main import create_app
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from tests.support.api import CopyAnsweringClient
from tests.support.text_pictures import CORPUS, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, encoder, tiny_model_dir):
    folder = tmp_path_factory.mktemp("text-in-images")
    paths = write_corpus(folder / "pictures", with_photos=6)
    settings = Settings(
        _env_file=None,
        milvus_uri=str(folder / "data" / "milvus.db"),
        model=str(tiny_model_dir),
        device="cpu",
        batch_size=8,
        precision="fp32",
        cache_dir=folder / "data" / "cache",
        thumbnail_dir=folder / "data" / "thumbnails",
        allowed_roots=[folder],
        vector_cache="off",
    )
    store = MilvusStore.from_settings(settings)
    report = run_index([str(folder / "pictures")], settings, encoder, store)
    store.close()
    assert report.embedded == len(paths) and not report.failed
    assert report.text["read"] == len(paths) and report.text["with_text"] >= len(CORPUS)
    return settings, paths


@pytest.fixture(params=["milvus", "vector copy"])
def client(request, corpus, encoder):
    settings, _ = corpus
    if request.param == "vector copy":
        with CopyAnsweringClient(create_app(settings.model_copy(update={"vector_cache": "on"}), encoder=encoder)) as c:
            yield c
    else:
        with TestClient(create_app(settings, encoder=encoder)) as c:
            yield c


def top(client, text: str, k: int = 3, **extra) -> list[str]:
    response = client.post("/search", json={"text": text, "limit": 20, **extra})
    assert response.status_code == 200, response.text
    return [hit["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0] for hit in response.json()["results"]][:k]


def test_a_phrase_in_a_picture_finds_it_in_the_top_3(client):
    missed = [(p.name, phrase, top(client, phrase)) for p in CORPUS for phrase in p.phrases]
    assert [miss for miss in missed if miss[0] not in miss[2]] == []
    assert sum(len(p.phrases) for p in CORPUS) >= 8


def test_a_lone_token_finds_its_picture_in_the_top_3_also_inside_codes_and_in_any_case(client):
    queries = [(p.name, query) for p in CORPUS for token in p.tokens for query in (token, token.swapcase())]
    missed = [(name, query, found) for name, query in queries if name not in (found := top(client, query))]
    assert missed == []


def test_a_hit_carries_the_text_read_and_says_it_was_found_by_it(client):
    hit = client.post("/search", json={"text": "0x80070005", "limit": 3}).json()["results"][0]
    assert hit["path"].endswith("error_dialog.png")
    assert "0x80070005" in hit["image_text"] and "Access is denied" in hit["image_text"]
    assert hit["text_match"] is True
    photo = client.post("/search", json={"text": "x", "limit": 20, "filter": {"has_text": False}}).json()["results"]
    assert photo and all(hit["image_text"] == "" for hit in photo)


def test_a_query_that_matches_no_text_ranks_as_the_picture_alone(client):
    for query in ("a sleeping dog on grass", "zebra crossing at dusk", "qwxz"):
        default = client.post("/search", json={"text": query, "limit": 20}).json()
        alone = client.post("/search", json={"text": query, "limit": 20, "lexical_weight": 0}).json()
        assert [h["id"] for h in default["results"]] == [h["id"] for h in alone["results"]], query
        assert [h["score"] for h in default["results"]] == [h["score"] for h in alone["results"]]


def test_the_words_control_off_leaves_the_picture_alone(client):
    by_words = client.post("/search", json={"text": "58213", "limit": 20}).json()["results"]
    alone = client.post("/search", json={"text": "58213", "limit": 20, "lexical_weight": 0}).json()["results"]
    assert by_words[0]["path"].endswith("receipt.png") and by_words[0]["text_match"]
    assert not any(hit["text_match"] or hit["name_match"] for hit in alone)
    vector_order = [hit["id"] for hit in alone]
    assert [hit["id"] for hit in by_words[1:]] == [i for i in vector_order if i != by_words[0]["id"]][:19]


def test_has_text_filters_pictures_with_and_without_text(client):
    with_text = top(client, "anything", k=20, filter={"has_text": True})
    without = top(client, "anything", k=20, filter={"has_text": False})
    assert set(with_text) == {picture.name for picture in CORPUS}
    assert set(without) == {f"photo_{i}" for i in range(6)}


def test_an_index_job_of_the_api_reads_the_text_in_the_background_and_makes_it_searchable(corpus, encoder, tmp_path):
    """POST /index embeds first (the job ends), then the API's background text stage reads the pictures: a lone
    token written in one of them finds it, found by its text, without a restart."""
    settings, paths = corpus
    folder = tmp_path / "new-pictures"
    folder.mkdir()
    for name in ("receipt", "gate_sign"):
        (folder / paths[name].name).write_bytes(paths[name].read_bytes())
    fresh = settings.model_copy(
        update={"milvus_uri": str(tmp_path / "data" / "milvus.db"), "allowed_roots": [tmp_path]}
    )
    with TestClient(create_app(fresh, encoder=encoder)) as client:
        job = client.post("/index", json={"paths": [str(folder)]}).json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/index/{job}").json()["state"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get(f"/index/{job}").json()["state"] == "done"
        found = []
        while time.monotonic() < deadline:
            response = client.post("/search", json={"text": "58213", "limit": 2}).json()["results"]
            found = [hit["path"].rsplit("/", 1)[-1] for hit in response if hit["text_match"]]
            if found:
                break
            time.sleep(0.5)
        assert found == [paths["receipt"].name], "the text stage never read the receipt"
