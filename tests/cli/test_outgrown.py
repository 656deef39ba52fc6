"""Past what Milvus Lite is made for, imgsearch says so itself: at the end of `imgsearch index` and in /health."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from imgsearch.cli import main
from imgsearch.search_api.main import create_app
from imgsearch.store import lite, release_hosted


@pytest.fixture
def index_here(cli_env, monkeypatch):
    """`imgsearch index` run in this process (so that the limit can be lowered), with the tests' settings."""
    for name in ("IMGSEARCH_MILVUS_URI", "IMGSEARCH_MODEL", "IMGSEARCH_DEVICE", "IMGSEARCH_PRECISION"):
        monkeypatch.setenv(name, cli_env[name])
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", cli_env["IMGSEARCH_CACHE_DIR"])
    yield lambda *paths: main(["index", *map(str, paths)])
    release_hosted(cli_env["IMGSEARCH_MILVUS_URI"])


def test_indexing_past_what_milvus_lite_is_made_for_says_how_to_move_to_a_server(
    index_here, photo_dir, monkeypatch, capsys
):
    monkeypatch.setattr(lite, "LITE_ADVISED_ROWS", 9)  # the photo set holds 10
    assert index_here(photo_dir) == 0
    said = capsys.readouterr().err
    assert "10 images is more than Milvus Lite is made for" in said and "IMGSEARCH_MILVUS_URI" in said


def test_an_index_within_what_milvus_lite_is_made_for_gets_no_advice(index_here, photo_dir, monkeypatch, capsys):
    monkeypatch.setattr(lite, "LITE_ADVISED_ROWS", 10)
    assert index_here(photo_dir) == 0
    assert "Milvus Lite is made for" not in capsys.readouterr().err


def test_health_gives_the_advice_past_the_limit_only(index_here, photo_dir, settings, encoder, monkeypatch):
    assert index_here(photo_dir) == 0
    with TestClient(create_app(settings, encoder=encoder)) as client:
        monkeypatch.setattr(lite, "LITE_ADVISED_ROWS", 10)
        assert "advice" not in client.get("/health").json()
        monkeypatch.setattr(lite, "LITE_ADVISED_ROWS", 9)
        assert "IMGSEARCH_MILVUS_URI" in client.get("/health").json()["advice"]
