"""`imgsearch watch` as a user runs it: a foreground process that catches up, indexes what is copied in, and stops
cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time

import pytest

from tests.support.photos import write_photo
from tests.support.processes import cli_environment, run_cli, spawn, stop_process

pytestmark = pytest.mark.slow


def test_imgsearch_watch_catches_up_indexes_a_new_photo_and_stops_on_sigterm(imgsearch_bin, tmp_path, tiny_model_dir):
    library = tmp_path / "library"
    for i in range(3):
        write_photo(library / f"p{i}.jpg", seed=i)
    env = {**cli_environment(tmp_path / "data", tiny_model_dir), "IMGSEARCH_WATCH_SETTLE_SECONDS": "0.5"}
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - the process writes to it until it stops
    watcher = spawn([imgsearch_bin, "watch", str(library)], env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_line(log, watcher, "caught up: 3 embedded")
        assert f"watching {library}: events" in output(log)
        write_photo(library / "new.jpg", seed=9)
        wait_for_line(log, watcher, "indexed changes: 1 embedded")
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
    finally:
        stop_process(watcher)
    searched = run_cli(imgsearch_bin, env, "search", "--image", str(library / "new.jpg"), "-k", "1", "--json")
    assert json.loads(searched.stdout)[0]["path"] == str(library / "new.jpg")


def wait_for_line(log, process, text: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in output(log):
        assert process.poll() is None and time.monotonic() < deadline, output(log)
        time.sleep(0.2)


def output(log) -> str:
    log.seek(0)
    return log.read()
