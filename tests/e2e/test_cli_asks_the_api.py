"""`imgsearch search` asks a running API that serves the same index instead of loading the model itself."""

from __future__ import annotations

import json
import subprocess
import time

import httpx

from tests.support.processes import free_port, run_cli, spawn, stop_process


def test_a_search_goes_to_the_running_api_of_the_same_index_only(imgsearch_bin, cli_env, photo_dir, tmp_path):
    assert run_cli(imgsearch_bin, cli_env, "index", str(photo_dir)).returncode == 0
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        api = spawn([imgsearch_bin, "serve", "--port", str(port)], cli_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(api, port)
        asking = {**cli_env, "IMGSEARCH_API_URL": f"http://127.0.0.1:{port}"}
        via_api = run_cli(imgsearch_bin, asking, "search", "a photo", "--json", "-k", "3")
        assert via_api.returncode == 0, via_api.stderr
        assert searches_served(log_path) == 1
        local = run_cli(
            imgsearch_bin,
            {**asking, "IMGSEARCH_API_URL": f"http://127.0.0.1:{free_port()}"},
            "search",
            "a photo",
            "--json",
            "-k",
            "3",
        )
        assert local.returncode == 0, local.stderr
        assert [hit["path"] for hit in json.loads(via_api.stdout)] == [hit["path"] for hit in json.loads(local.stdout)]

        other = run_cli(imgsearch_bin, {**asking, "IMGSEARCH_COLLECTION": "another"}, "search", "a photo")
        assert "does not exist yet" in other.stderr  # another index: searched here, never by this server
        assert searches_served(log_path) == 1
    finally:
        stop_process(api)


def wait_for_health(api: subprocess.Popen, port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert api.poll() is None and time.monotonic() < deadline, "imgsearch serve did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


def searches_served(log_path) -> int:
    time.sleep(0.3)  # uvicorn writes its access line after the response
    return log_path.read_text().count('"POST /search HTTP/1.1" 200')
