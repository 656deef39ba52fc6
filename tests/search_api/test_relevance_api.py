"""Relevance through the real API on real photos (scikit-learn's two sample photos, copied, re-encoded, converted
and rotated, among other pictures), indexed by a small random-weight CLIP of the real input size and vector
width: auto cutoff, collapse, duplicates, hybrid name search, composite terms and explanations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgsearch.indexer.runner import run_index
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.search_api.main import create_app
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from tests.support.library import COPIES, ORIGINAL, write_library
from tests.support.models import build_local_clip
from tests.support.processes import cli_environment, run_cli


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relevance")
    model_dir = build_local_clip(folder / "small-clip", "small", seed=0)
    encoder = SentenceTransformerEmbedder(str(model_dir), device="cpu", batch_size=16)
    photos = write_library(folder / "library")
    settings = Settings(
        _env_file=None,
        milvus_uri=str(folder / "data" / "milvus.db"),
        model=str(model_dir),
        device="cpu",
        batch_size=16,
        precision="fp32",
        cache_dir=folder / "data" / "cache",
        thumbnail_dir=folder / "data" / "thumbnails",
        allowed_roots=[folder],
    )
    store = MilvusStore.from_settings(settings)
    report = run_index([str(photos)], settings, encoder, store)
    assert report.embedded == 50 and not report.failed
    store.close()
    return folder, photos, settings, encoder


@pytest.fixture
def client(library):
    _, _, settings, encoder = library
    with TestClient(create_app(settings, encoder=encoder)) as client:
        yield client


def ids_by_path(client) -> dict[str, str]:
    hits = client.post("/search", json={"text": "anything", "limit": 200}).json()["results"]
    return {hit["path"]: hit["id"] for hit in hits}


def relative(photos: Path, hits: list[dict]) -> list[str]:
    return [os.path.relpath(hit["path"], photos) for hit in hits]


def test_an_image_query_with_the_auto_cutoff_returns_the_copies_and_stops_soon_after(library, client):
    _, photos, _, _ = library
    original = ids_by_path(client)[str(photos / ORIGINAL)]
    plain = client.post("/search", json={"image_id": original, "limit": 50}).json()
    assert len(plain["results"]) == 50 and plain["cutoff"] is None  # without it: the whole library, sorted
    cut = client.post("/search", json={"image_id": original, "limit": 50, "cutoff": "auto"}).json()
    found = relative(photos, cut["results"])
    assert set(found) >= {ORIGINAL, *COPIES}
    assert len(found) <= len(COPIES) + 1 + 2, found  # stops soon after them
    assert cut["cutoff"]["kept"] == len(found) and cut["cutoff"]["z"] >= 2.0
    for hit in cut["results"]:
        assert hit["score"] > 0.99  # nothing unlike the photo slipped in


def test_collapse_folds_the_copies_into_one_result(library, client):
    _, photos, _, _ = library
    ids = ids_by_path(client)
    original = ids[str(photos / ORIGINAL)]
    response = client.post("/search", json={"image_id": original, "limit": 10, "collapse": True}).json()
    first = response["results"][0]
    assert {first["id"], *first["duplicates"]} == {ids[str(photos / p)] for p in [ORIGINAL, *COPIES]}
    assert [folded["id"] for folded in first["folded"]] == first["duplicates"]  # what the UI shows as "+4 similar"
    assert {first["path"], *(folded["path"] for folded in first["folded"])} == {
        str(photos / p) for p in [ORIGINAL, *COPIES]
    }
    assert all(folded["thumbnail_url"] == f"/images/{folded['id']}/thumbnail" for folded in first["folded"])
    rest = {hit["id"] for hit in response["results"][1:]}
    assert not rest & set(first["duplicates"]) and len(response["results"]) == 10
    strict = client.post(
        "/search", json={"image_id": original, "limit": 10, "collapse": True, "collapse_threshold": 1.0}
    ).json()
    assert sum(len(hit["duplicates"]) for hit in strict["results"]) < len(COPIES)


def test_duplicates_finds_the_converted_and_rotated_copies_as_one_group(library, client):
    folder, photos, settings, _ = library
    expected = {str(photos / p) for p in [ORIGINAL, *COPIES]}
    response = client.get("/duplicates").json()
    groups = [{member["path"] for member in group["images"]} for group in response["groups"]]
    assert expected in groups and response["images"] == 50
    group = next(g for g in response["groups"] if {m["path"] for m in g["images"]} == expected)
    first, *others = group["images"]
    assert first["why"] == "" and first["similarity"] == 1.0
    for member in others:  # each says what differs from the first: here the format, or only the encoding
        formats = {os.path.splitext(p)[1] for p in (first["path"], member["path"])}
        assert member["why"].startswith("same picture: ") and member["similarity"] >= 0.95
        assert (" vs " in member["why"]) == (formats not in ({".jpg"}, {".png"}, {".webp"})), member
    assert client.get("/duplicates", params={"threshold": 0.3}).status_code == 422


def test_imgsearch_duplicates_on_the_command_line(library, client, imgsearch_bin):
    folder, photos, settings, _ = library
    env = cli_environment(folder / "data", Path(settings.model))  # beside the running API, on its data directory
    done = run_cli(imgsearch_bin, env, "duplicates", "--json")
    assert done.returncode == 0, done.stderr
    groups = [{m["path"] for m in g["images"]} for g in json.loads(done.stdout)["groups"]]
    assert {str(photos / p) for p in [ORIGINAL, *COPIES]} in groups
    text = run_cli(imgsearch_bin, env, "duplicates")
    assert str(photos / ORIGINAL) in text.stdout and "groups of near-identical images among 50" in text.stderr


def test_hybrid_search_ranks_a_file_first_by_its_name(library, client):
    _, photos, _, _ = library
    for name in ("IMG_2041", "block07", "flower_crop2"):
        vector_only = client.post("/search", json={"text": name, "limit": 5, "lexical_weight": 0}).json()["results"]
        hybrid = client.post("/search", json={"text": name, "limit": 5, "lexical_weight": 0.5}).json()["results"]
        assert os.path.splitext(os.path.basename(hybrid[0]["path"]))[0] == name and hybrid[0]["name_match"]
        assert hybrid[0]["score"] == pytest.approx(
            next((h["score"] for h in vector_only if h["id"] == hybrid[0]["id"]), hybrid[0]["score"]), abs=1e-4
        )
    folder = client.post("/search", json={"text": "paris", "limit": 3, "lexical_weight": 0.5}).json()["results"]
    assert relative(photos, folder)[0] == ORIGINAL  # folder names count too


def test_quoted_text_searches_names_and_sidecars_only(library, client):
    _, photos, _, _ = library
    response = client.post("/search", json={"text": '"dahlia"', "limit": 10}).json()
    assert relative(photos, response["results"]) == ["misc/flower.jpg"]  # from its .txt sidecar
    assert client.post("/search", json={"text": '"zeppelin"'}).json()["results"] == []


def test_composite_terms_with_uploads_and_an_explanation_that_adds_up(library, client):
    _, photos, _, _ = library
    flower = (photos / "misc/flower.jpg").read_bytes()
    china = (photos / ORIGINAL).read_bytes()
    query = {
        "terms": [
            {"upload_ref": "china.jpg", "weight": 2},
            {"upload_ref": "1", "weight": 1},
            {"text": "a garden", "weight": -0.5},
        ],
        "explain": True,
        "limit": 5,
    }
    response = client.post(
        "/search/image",
        files=[("file", ("china.jpg", china)), ("file", ("f.jpg", flower))],
        data={"query": json.dumps(query)},
    )
    assert response.status_code == 200, response.text
    for hit in response.json()["results"]:
        parts = hit["explanation"]
        assert [p["term"] for p in parts] == ["upload china.jpg", "upload f.jpg", "a garden"]
        assert sum(p["contribution"] for p in parts) == pytest.approx(hit["score"], abs=1e-4)
    scores = [hit["score"] for hit in response.json()["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    missing = client.post(
        "/search/image",
        files=[("file", ("a.jpg", china))],
        data={"query": json.dumps({"terms": [{"upload_ref": "b.jpg"}]})},
    )
    assert missing.status_code == 422 and "no upload 'b.jpg'" in missing.json()["detail"]
    both = client.post("/search", json={"terms": [{"text": "x", "image_id": "y"}]})
    assert both.status_code == 422 and "exactly one of" in both.json()["detail"]


def test_diversity_moves_look_alikes_down(library, client):
    _, photos, _, _ = library
    original = ids_by_path(client)[str(photos / ORIGINAL)]
    copies = {ORIGINAL, *COPIES}
    plain = relative(photos, client.post("/search", json={"image_id": original, "limit": 5}).json()["results"])
    varied = relative(
        photos, client.post("/search", json={"image_id": original, "limit": 5, "diversity": 0.8}).json()["results"]
    )
    assert set(plain) == copies and varied[0] in copies and len(set(varied) & copies) == 1
