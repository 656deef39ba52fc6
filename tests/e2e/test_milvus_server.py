"""The same code against real Milvus servers on 127.0.0.1: Milvus Lite's `milvus-lite server`, and the C++
Milvus 2.3 standalone from the PyPI package `milvus` (`milvus-server`, with embedded etcd)."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.support.milvus import MILVUS_SERVERS, unique_collection
from tests.support.photos import write_photo
from tests.support.processes import start_api, stop_process


@pytest.fixture(params=MILVUS_SERVERS)
def server_cli_env(request, milvus_servers, cli_env):
    """Every `imgsearch` process of these tests talks to the server, in a collection of this test's own."""
    return {
        **cli_env,
        "IMGSEARCH_MILVUS_URI": milvus_servers(request.param),
        "IMGSEARCH_COLLECTION": unique_collection(),
    }


@pytest.mark.slow
def test_index_search_and_two_processes_at_once_on_a_milvus_server(imgsearch_bin, server_cli_env, photo_dir, tmp_path):
    env = server_cli_env
    subprocess.run([imgsearch_bin, "index", str(photo_dir)], env=env, check=True, capture_output=True, timeout=120)
    process, server = start_api(imgsearch_bin, env)
    try:
        assert httpx.get(f"{server}/health").json()["count"] == 10
        a, b = tmp_path / "shard-a", tmp_path / "shard-b"
        for i in range(12):
            write_photo((a if i % 2 else b) / f"s{i}.png", seed=700 + i)
        runs = [
            subprocess.Popen(
                [imgsearch_bin, "index", str(shard), "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for shard in (a, b)
        ]
        try:
            while any(run.poll() is None for run in runs):
                assert (
                    httpx.post(f"{server}/search", json={"text": "blocks", "limit": 3}, timeout=60).status_code == 200
                )
                time.sleep(0.2)
        finally:
            outputs = [run.communicate(timeout=300) for run in runs]
        for run, (out, err) in zip(runs, outputs):
            assert run.returncode == 0, err
            assert json.loads(out)["embedded"] == 6
        assert httpx.get(f"{server}/health").json()["count"] == 22
        top = httpx.post(f"{server}/search/image", files={"file": ("q.png", (a / "s3.png").read_bytes())}).json()
        assert top["results"][0]["path"] == str(a / "s3.png") and top["results"][0]["score"] >= 0.99
    finally:
        stop_process(process)


@pytest.mark.slow
def test_tags_are_written_filtered_and_taken_off_on_a_milvus_server(imgsearch_bin, server_cli_env, photo_dir, tmp_path):
    """Milvus 2.3 has array fields but no partial updates: tags are then written with whole rows."""
    env = server_cli_env
    subprocess.run([imgsearch_bin, "index", str(photo_dir)], env=env, check=True, capture_output=True, timeout=120)
    labels = tmp_path / "pets.txt"
    labels.write_text("dog\ncat\nbeach\n")
    tagged = subprocess.run(
        [imgsearch_bin, "tag", "--labels", str(labels), "--top", "2", "--min-score", "-1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert tagged.returncode == 0, tagged.stderr
    report = json.loads(tagged.stdout)
    assert report["tagged"] == 10 and sum(report["counts"].values()) == 20
    label = max(report["counts"], key=report["counts"].get)
    found = subprocess.run(
        [imgsearch_bin, "search", "blocks", "--tag", label, "-k", "20", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    hits = json.loads(found.stdout)
    assert len(hits) == report["counts"][label] and all(label in hit["tags"] for hit in hits)
    assert len({hit["path"] for hit in hits}) == len(hits)  # whole-row writes duplicated nothing
    removed = subprocess.run(
        [imgsearch_bin, "tag", "--remove", "pets", "--json"], env=env, capture_output=True, text=True, timeout=180
    )
    assert json.loads(removed.stdout)["updated"] == 10
    everything = json.loads(
        subprocess.run(
            [imgsearch_bin, "search", "blocks", "-k", "20", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
    )
    assert len(everything) == 10 and all(hit["tags"] == [] for hit in everything)
