"""Process hygiene: what the tests and `imgsearch ui` start is stopped with everything it started, and the
tests do not depend on the developer's shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.processes import _group_alive, http_ready, spawn, start_server, stop_process


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_stop_process_also_stops_the_children_of_the_process():
    process = spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    time.sleep(0.3)
    assert _group_alive(process.pid)
    stop_process(process, grace_s=5)
    assert process.returncode is not None and not _group_alive(process.pid)


def test_imgsearch_ui_listens_on_loopback_and_stops_whole_on_sigterm(imgsearch_bin, cli_env):
    process, port = start_server(
        lambda port: [imgsearch_bin, "ui", "--port", str(port), "--api-url", "http://127.0.0.1:9"],
        cli_env,
        http_ready("/_stcore/health"),
        timeout_s=60,
    )
    try:
        assert listening_addresses(port) == {"127.0.0.1"}
        os.kill(process.pid, signal.SIGTERM)  # as a terminal's Ctrl-C or a service manager would: the process only
        process.wait(timeout=15)
        deadline = time.monotonic() + 5
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(process.pid), "a child of `imgsearch ui` outlived it"
    finally:
        stop_process(process)


@pytest.mark.slow
def test_the_developers_imgsearch_variables_and_env_file_do_not_change_the_tests(tmp_path):
    """A shell with an API key, a server URI and a `.env` of its own still runs the tests as CI does."""
    (tmp_path / ".env").write_text(
        "IMGSEARCH_COLLECTION=from_dotenv\nIMGSEARCH_VECTOR_CACHE=off\nIMGSEARCH_API_KEY=from-dotenv\n"
    )
    hostile = {
        **os.environ,
        "IMGSEARCH_API_KEY": "developers-key",
        "IMGSEARCH_MILVUS_URI": "http://127.0.0.1:9",
        "IMGSEARCH_MODEL": "/nonexistent/model",
        "IMGSEARCH_MAX_UPLOAD_BYTES": "10",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(REPO),
            str(REPO / "tests" / "search_api" / "test_api.py") + "::test_health_reports_model_dimension_and_count",
            str(REPO / "tests" / "search_api" / "test_api.py")
            + "::test_uploading_an_indexed_image_finds_it_first_with_score_near_one",
        ],
        cwd=tmp_path,
        env=hostile,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout
