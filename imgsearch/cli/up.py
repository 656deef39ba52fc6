"""``imgsearch up``: the search API and the web UI in one command, with the folders given indexed in the background
and watched: what is added, moved or deleted later is indexed as it happens (``--no-watch``: once only).

A launcher that owns its children: each runs in a process group of its own, and on Ctrl-C, SIGTERM or the end of
either child, every group it started is stopped (SIGTERM, then SIGKILL after a grace period). On Linux a child is
also told to stop if the launcher itself dies without a chance to clean up."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from imgsearch.cli.common import EXIT_ERROR, EXIT_OK, Command, UsageError, settings, shown
from imgsearch.cli.options import add_common, add_model_options

GRACE_S = 15  # what a child gets to stop on SIGTERM before it is killed
POLL_S = 0.5
WATCHER = "watcher"  # in place of a job id: report the API's watcher


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    from imgsearch.settings import Settings

    host, port = (Settings.model_fields[name].default for name in ("host", "port"))
    parser.add_argument(
        "paths", nargs="*", help="folders to index in the background and watch (progress in the UI and here)"
    )
    parser.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="index the folders once, without watching them for changes afterwards",
    )
    parser.add_argument(
        "--host",
        default=host,
        help=f"address the UI listens on (default {host}, this machine only); the API it uses stays on 127.0.0.1 "
        "(`imgsearch serve --host` exposes an API)",
    )
    parser.add_argument("--port", type=int, default=port, help=f"the API's port (default {port})")
    parser.add_argument("--ui-port", type=int, default=8501, help="the UI's port (default 8501)")
    add_common(parser)
    add_model_options(parser)


def cmd_up(args: argparse.Namespace) -> int:
    roots = [os.path.realpath(os.path.expanduser(path)) for path in args.paths]
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        raise UsageError(f"no such folder: {missing[0]}")
    config = settings(args)
    reach = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    api_url = f"http://127.0.0.1:{args.port}"  # the UI's own API: never exposed by up
    env = _child_environment(args, config, roots, api_url)
    children = Children()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        watching = ["--watch", *roots] if roots and args.watch else []
        api = children.start([*_imgsearch(), "serve", "--host", "127.0.0.1", "--port", str(args.port), *watching], env)
        if not _wait_until_healthy(api, api_url, config.api_key):
            return EXIT_ERROR
        children.start(
            [*_imgsearch(), "ui", "--api-url", api_url, "--port", str(args.ui_port), "--host", args.host], env
        )
        print(f"imgsearch: open http://{reach}:{args.ui_port} (the API is at {api_url}; Ctrl-C stops both)", flush=True)
        if watching:
            print(f"imgsearch: indexing {', '.join(map(shown, roots))} and watching for changes", flush=True)
            job = WATCHER
        else:
            job = _submit(api_url, config.api_key, roots) if roots else None
        return _watch(children, api_url, config.api_key, job)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        children.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _imgsearch() -> list[str]:
    return [sys.executable, "-m", "imgsearch.cli"]


def _child_environment(args: argparse.Namespace, config: Any, roots: list[str], api_url: str) -> dict[str, str]:
    """The environment both children read their settings from: the flags given here, the folders to index added
    to the roots the API may read, and where the UI finds the API."""
    env = dict(os.environ)
    for name in ("milvus_uri", "collection", "model", "device", "precision", "backend"):
        if getattr(args, name, None) is not None:
            env[f"IMGSEARCH_{name.upper()}"] = str(getattr(args, name))
    allowed = sorted({*(str(root) for root in config.allowed_roots), *roots})
    env["IMGSEARCH_ALLOWED_ROOTS"] = json.dumps(allowed)
    env["IMGSEARCH_API_URL"] = api_url
    return env


class Children:
    """The processes this launcher started, each the leader of its own process group."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str], quiet: bool = False) -> subprocess.Popen:
        """Start ``command``; ``quiet``: without its standard output (Streamlit's banner: up prints the one URL)."""
        stdout = subprocess.DEVNULL if quiet else None
        process = subprocess.Popen(command, env=env, stdout=stdout, start_new_session=True, preexec_fn=_die_with_parent)
        self.processes.append(process)
        return process

    def exited(self) -> subprocess.Popen | None:
        return next((process for process in self.processes if process.poll() is not None), None)

    def stop_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes:  # the group too: a Milvus Lite server the API started, say
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the launcher dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_until_healthy(api: subprocess.Popen, api_url: str, api_key: str) -> bool:
    """Wait for the API to answer (the model loads first); False if it exits before it does. Only a server of this
    user's on the port counts: another user listening there first gets nothing, the key included."""
    from imgsearch.cli.local_api import NotOurs, call

    while api.poll() is None:
        with contextlib.suppress(NotOurs):
            if call("GET", f"{api_url}/health", api_key, 2)[0] == 200:
                return True
        time.sleep(POLL_S)
    print(
        f"imgsearch up: the API stopped (exit {api.returncode}) before it served; see its messages above",
        file=sys.stderr,
    )
    return False


def _submit(api_url: str, api_key: str, roots: list[str]) -> str | None:
    """Queue the folders as one index job of the API's; its id."""
    from imgsearch.cli.local_api import NotOurs, call

    try:
        status, job = call("POST", f"{api_url}/index", api_key, 30, json_body={"paths": roots})
    except NotOurs as exc:
        status, job = 0, str(exc)
    if status != 202 or not isinstance(job, dict):
        print(
            f"imgsearch up: indexing {', '.join(map(shown, roots))} refused: {shown(str(job))[:300]}", file=sys.stderr
        )
        return None
    print(f"imgsearch: indexing {', '.join(map(shown, roots))} in the background", flush=True)
    return str(job["job_id"])


def _watch(children: Children, api_url: str, api_key: str, job: str | None) -> int:
    """Until a child ends: say how the index job (or the watcher) gets on, a line every few seconds while it runs."""
    said, last, runs = "", 0.0, 0
    while (ended := children.exited()) is None:
        if job and time.monotonic() - last >= (2 if job == WATCHER else 5):
            last = time.monotonic()
            if job == WATCHER:
                line, runs = _watcher_line(api_url, api_key, runs)
                finished = False
            else:
                line, finished = _job_line(api_url, api_key, job)
            if line and (job == WATCHER or line != said):
                print(line, flush=True)
                said = line
            job = None if finished else job
        time.sleep(POLL_S)
    print(
        f"imgsearch up: {' '.join(map(str, ended.args[3:4]))} stopped (exit {ended.returncode}); stopping the rest",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _watcher_line(api_url: str, api_key: str, runs: int) -> tuple[str, int]:
    """A line when the API's watcher finished a run since ``runs`` runs (what the run did), and the runs now."""
    from imgsearch.cli.local_api import NotOurs, call

    try:
        status, state = call("GET", f"{api_url}/watch", api_key, 5)
    except NotOurs:
        return "", runs
    if status != 200 or not isinstance(state, dict) or int(state.get("runs") or 0) <= runs:
        return "", runs
    report = state.get("last_report") or {}
    done = [f"{report.get(name, 0):,} {name}" for name in ("moved", "copied", "removed") if report.get(name)]
    return (
        f"imgsearch: indexed: {report.get('embedded', 0):,} embedded, {report.get('unchanged', 0):,} unchanged, "
        + "".join(f"{part}, " for part in done)
        + f"{len(report.get('failed') or []):,} failed"
    ), int(state["runs"])


def _job_line(api_url: str, api_key: str, job: str) -> tuple[str, bool]:
    """What the log says of the job now, and whether it has finished."""
    from imgsearch.cli.local_api import NotOurs, call

    try:
        status, state = call("GET", f"{api_url}/index/{job}", api_key, 5)
    except NotOurs:
        return "", False
    if status != 200 or not isinstance(state, dict):
        return "", False
    if state.get("state") == "running" and state.get("total"):
        return f"imgsearch: indexing {state['processed']:,} of {state['total']:,}", False
    if state.get("state") == "done":
        report = state.get("report") or {}
        return (
            f"imgsearch: indexed: {report.get('embedded', 0):,} embedded, {report.get('unchanged', 0):,} "
            f"unchanged, {len(report.get('failed', [])):,} failed"
        ), True
    if state.get("state") == "failed":
        return f"imgsearch: indexing failed: {shown(str(state.get('error')))}", True
    return "", False


COMMANDS = (
    Command("up", "start the API and the UI, and index and watch folders in the background", _up_arguments, cmd_up),
)
