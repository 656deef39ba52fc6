"""The same code against real Milvus servers on 127.0.0.1: Milvus Lite's `milvus-lite server`, and the C++
Milvus 2.3 standalone from the PyPI package `milvus` (`milvus-server`, with embedded etcd)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, write_photo


def _wait_until_serving(uri: str, process: subprocess.Popen, timeout_s: float) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Milvus server exited with {process.returncode}")
        try:
            client = MilvusClient(uri=uri, timeout=5)
            client.list_collections()
            client.close()
            return
        except Exception:
            time.sleep(1)
    pytest.fail(f"Milvus server at {uri} did not answer within {timeout_s}s")


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """Stop the server and everything it started: `milvus-server` runs the C++ binary as a child, which
    would otherwise outlive it and keep etcd's fixed ports (2379/2380) for the next start."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:  # the C++ standalone ignores SIGTERM for a long while
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(params=["milvus-lite-server", "milvus-2.3-standalone"])
def milvus_server_uri(request, tmp_path):
    """A real Milvus-protocol server on 127.0.0.1: Milvus Lite's gRPC server, or the C++ Milvus standalone."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    if request.param == "milvus-lite-server":
        command = [str(bin_dir / "milvus-lite"), "server", "--data-dir", str(tmp_path / "server-data"),
                   "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [str(bin_dir / "milvus-server"), "--data", str(tmp_path / "standalone-data"),
                   "--proxy-port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(uri, process, timeout_s=180)
        yield uri
    finally:
        _stop(process, grace_s=10)


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
