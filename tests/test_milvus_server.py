"""The same code against a Milvus server over gRPC: Milvus Lite's own `milvus-lite server` on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, write_photo


@pytest.fixture
def milvus_server_uri(tmp_path):
    port = free_port()
    binary = Path(sys.executable).parent / "milvus-lite"
    process = subprocess.Popen([str(binary), "server", "--data-dir", str(tmp_path / "server-data"),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"milvus-lite server exited with {process.returncode}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def cli_env(cli_env, milvus_server_uri):
    """Every `imgsearch` process of these tests talks to the server, not to a local data directory."""
    return {**cli_env, "IMGSEARCH_MILVUS_URI": milvus_server_uri}


@pytest.mark.slow
def test_index_search_and_two_processes_at_once_on_a_milvus_server(server, imgsearch_bin, cli_env, tmp_path):
    assert httpx.get(f"{server}/health").json()["count"] == 10  # indexed through the server by the fixture
    a, b = tmp_path / "shard-a", tmp_path / "shard-b"
    for i in range(12):
        write_photo((a if i % 2 else b) / f"s{i}.png", seed=700 + i)
    runs = [subprocess.Popen([imgsearch_bin, "index", str(shard), "--json"], env=cli_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for shard in (a, b)]
    while any(run.poll() is None for run in runs):
        assert httpx.post(f"{server}/search", json={"text": "blocks", "limit": 3}, timeout=60).status_code == 200
        time.sleep(0.2)
    for run in runs:
        out, err = run.communicate()
        assert run.returncode == 0, err
        assert json.loads(out)["embedded"] == 6
    assert httpx.get(f"{server}/health").json()["count"] == 22
    top = httpx.post(f"{server}/search/image", files={"file": ("q.png", (a / "s3.png").read_bytes())}).json()
    assert top["results"][0]["path"] == str(a / "s3.png") and top["results"][0]["score"] >= 0.99
