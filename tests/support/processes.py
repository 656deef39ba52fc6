"""Processes a test starts: each in its own session, stopped with its whole group, never left behind; real
servers on free ports; the real `imgsearch` command."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest


def run_cli(imgsearch_bin: str, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real `imgsearch` command to the end; its output as text."""
    return subprocess.run([imgsearch_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)


def cli_environment(data_dir: Path, model_dir: Path) -> dict[str, str]:
    """Environment for running the real `imgsearch` command in a subprocess."""
    return {
        **os.environ,
        "IMGSEARCH_MILVUS_URI": str(data_dir / "milvus.db"),
        "IMGSEARCH_MODEL": str(model_dir),
        "IMGSEARCH_DEVICE": "cpu",
        "IMGSEARCH_BATCH_SIZE": "8",
        "IMGSEARCH_PRECISION": "fp32",
        "IMGSEARCH_CACHE_DIR": str(data_dir / "cache"),
        "IMGSEARCH_THUMBNAIL_DIR": str(data_dir / "thumbnails"),
        "PYTHONUNBUFFERED": "1",
    }


_started: list[subprocess.Popen] = []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(command: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group, remembered so the session can check it stopped."""
    process = subprocess.Popen(command, env=env, start_new_session=True, **kwargs)
    _started.append(process)
    return process


def stop_process(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process's whole group, wait, then SIGKILL whatever of the group is left; always reaps."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (process.poll() is None or _group_alive(process.pid)):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    while _group_alive(process.pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process group a test started is still alive, and stop it."""
    leaked = [p for p in _started if _group_alive(p.pid)]
    for process in leaked:
        stop_process(process, grace_s=2)
    if leaked:
        commands = "\n".join(" ".join(map(str, p.args))[:160] for p in leaked)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"processes left running by the tests:\n{commands}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PORT_TAKEN = ("address already in use", "address in use", "bind failed", "errno 98")


def start_server(
    make_command: Callable[[int], list[str]],
    env: dict[str, str] | None,
    ready: Callable[[int], bool],
    timeout_s: float = 90,
    attempts: int = 4,
) -> tuple[subprocess.Popen, int]:
    """Start a server on a free port and wait until ``ready(port)``; on a port taken meanwhile, retry another.

    Output goes to a temporary file, not a pipe: a pipe nobody reads fills up with access logs and blocks the
    server.
    """
    for _attempt in range(attempts):
        port = free_port()
        log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - the server writes to it after this returns
        process = spawn(make_command(port), env, stdout=log, stderr=subprocess.STDOUT, text=True)

        def output(log=log) -> str:
            log.seek(0)
            return log.read()[-5000:]

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if ready(port):
                    return process, port
            except Exception:
                pass
            time.sleep(0.3)
        stop_process(process, grace_s=5)
        text = output()
        if any(marker in text.lower() for marker in _PORT_TAKEN):
            continue  # another process took the port between free_port() and the bind
        pytest.fail(f"{' '.join(make_command(port))} did not become ready on port {port}: {text}")
    pytest.fail(f"no free port after {attempts} attempts")


def http_ready(path: str) -> Callable[[int], bool]:
    return lambda port: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200


def start_api(imgsearch_bin: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A real `imgsearch serve` (uvicorn); returns the process and its base URL."""
    process, port = start_server(lambda port: [imgsearch_bin, "serve", "--port", str(port)], env, http_ready("/health"))
    return process, f"http://127.0.0.1:{port}"
