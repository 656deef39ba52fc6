"""A real `imgsearch serve` process (uvicorn) on real Milvus Lite, with `imgsearch index` running beside it."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from imgsearch.search_api.connections import HEAD_TIMEOUT_S
from tests.support.photos import write_photo


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
        result = subprocess.run(
            [imgsearch_bin, "index", str(more), "--json"], env=server_env, capture_output=True, text=True, timeout=180
        )
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
    assert (
        httpx.post(f"{server}/search", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    image = ok.json()["results"][0]
    assert httpx.get(f"{server}{image['thumbnail_url']}").headers["content-type"] == "image/jpeg"


@pytest.mark.slow
def test_clients_that_never_finish_a_request_are_let_go_while_others_are_answered(server):
    """A local user opening connections that send nothing, or a byte at a time, used to hold each of them (and a
    file descriptor) forever, until the server had none left for anyone."""
    address = httpx.URL(server)
    silent = socket.create_connection((address.host, address.port))
    dribbler = socket.create_connection((address.host, address.port))
    dribbler.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    after_a_response = socket.create_connection((address.host, address.port))
    after_a_response.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in after_a_response.recv(4096)
    after_a_response.sendall(b"G")  # the next request begins, and stops there

    closed_after: dict[str, float] = {}
    started = time.monotonic()

    def watch(name: str, sock: socket.socket, dribble: bool) -> None:
        sock.settimeout(1.0)
        while time.monotonic() - started < HEAD_TIMEOUT_S + 20:
            try:
                if dribble:
                    sock.sendall(b"X")  # one more byte of a header that never ends
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                break
        closed_after[name] = time.monotonic() - started

    watchers = [
        threading.Thread(target=watch, args=args)
        for args in (
            ("silent", silent, False),
            ("dribbler", dribbler, True),
            ("after a response", after_a_response, False),
        )
    ]
    for watcher in watchers:
        watcher.start()
    assert httpx.get(f"{server}/health").status_code == 200  # everyone else is answered meanwhile
    for watcher in watchers:
        watcher.join()
    for sock in (silent, dribbler, after_a_response):
        sock.close()
    assert all(HEAD_TIMEOUT_S - 1 <= seconds <= HEAD_TIMEOUT_S + 10 for seconds in closed_after.values()), closed_after


def test_the_server_raises_its_open_file_limit_to_what_the_system_allows():
    """Each connection takes a file descriptor; a soft limit of 1024 let 1,100 idle connections shut everyone out."""
    code = (
        "import resource\n"
        "from imgsearch.search_api.connections import raise_open_file_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raise_open_file_limit()\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    soft, hard = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(soft) == (int(hard) if int(hard) != resource.RLIM_INFINITY else 1 << 20) > 256
