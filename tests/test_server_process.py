"""A real `imgsearch serve` process (uvicorn) on real Milvus Lite, with `imgsearch index` running beside it."""

from __future__ import annotations

import subprocess
import threading

import httpx
import pytest

from tests.conftest import write_photo


@pytest.mark.slow
def test_cli_indexing_while_the_server_runs_is_seen_by_the_next_search(server, imgsearch_bin, server_env, tmp_path):
    before = httpx.get(f"{server}/health").json()["count"]
    assert before >= 10
    more = tmp_path / "more"
    for i in range(30):
        write_photo(more / f"m{i}.png", seed=900 + i)

    errors: list[str] = []
    stop = threading.Event()

    def keep_searching():
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/search", json={"text": "blocks", "limit": 5})
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text}")

    searchers = [threading.Thread(target=keep_searching) for _ in range(2)]
    for thread in searchers:
        thread.start()
    try:
        result = subprocess.run([imgsearch_bin, "index", str(more), "--json"], env=server_env,
                                capture_output=True, text=True, timeout=180)
    finally:
        stop.set()
        for thread in searchers:
            thread.join()
    assert result.returncode == 0, result.stderr
    assert "Open local milvus failed" not in result.stderr
    assert errors == []
    assert httpx.get(f"{server}/health").json()["count"] == before + 30
    data = (more / "m7.png").read_bytes()
    top = httpx.post(f"{server}/search/image", files={"file": ("m7.png", data)}).json()["results"][0]
    assert top["path"] == str(more / "m7.png")


@pytest.mark.slow
def test_curl_style_requests_against_the_real_server(server):
    ok = httpx.post(f"{server}/search", json={"text": "a red bicycle", "limit": 3})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3
    assert httpx.post(f"{server}/search", json={"text": " "}).status_code == 422
    assert httpx.post(f"{server}/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    image = ok.json()["results"][0]
    assert httpx.get(f"{server}{image['thumbnail_url']}").headers["content-type"] == "image/jpeg"
