"""`imgsearch up`: one command starts the API and the UI, indexes and watches the folders given, and leaves nothing
running."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.photos import write_photo, write_photo_set
from tests.support.processes import cli_environment, free_port, spawn, stop_process


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_serves_the_ui_indexes_and_watches_the_folder_and_sigterm_stops_every_child(
    imgsearch_bin, tmp_path, tiny_model_dir
):
    photos = write_photo_set(tmp_path / "photos")
    env = cli_environment(tmp_path / "data", tiny_model_dir)
    api_port, ui_port = free_port(), free_port()
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - the launcher writes to it until it stops
    up = spawn(
        [imgsearch_bin, "up", str(photos), "--port", str(api_port), "--ui-port", str(ui_port)],
        env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        count = 0
        while count < 10:
            assert up.poll() is None and time.monotonic() < deadline, output(log)
            with contextlib.suppress(httpx.HTTPError):
                count = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=2).json().get("count", 0)
            time.sleep(0.5)
        while "indexed: 10 embedded" not in output(log):
            assert time.monotonic() < deadline, output(log)
            time.sleep(0.5)
        write_photo(photos / "later" / "arrived.jpg", seed=99)  # watched: indexed without being asked
        while count < 11:
            assert time.monotonic() < deadline, output(log)
            count = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=2).json().get("count", 0)
            time.sleep(0.25)
        assert httpx.get(f"http://127.0.0.1:{api_port}/watch", timeout=2).json()["roots"][0]["mode"] == "events"
        assert f"open http://127.0.0.1:{ui_port}" in output(log)
        assert httpx.get(f"http://127.0.0.1:{ui_port}/", timeout=10).status_code == 200
        children = descendants(up.pid)
        assert len(children) >= 2  # the API and the UI, at least

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not [pid for pid in children if alive(pid)]
    finally:
        stop_process(up)


def output(log) -> str:
    log.seek(0)
    return log.read()
