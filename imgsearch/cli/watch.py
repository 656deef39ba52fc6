"""``imgsearch watch``: keep the index in line with folders as they change, in the foreground, without the API.

``imgsearch serve --watch`` and ``imgsearch up`` watch the same way inside the API (search_api/services/watch.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from imgsearch.cli.common import EXIT_OK, Command, UsageError, settings, shown, with_indexed_model
from imgsearch.cli.options import add_common, add_model_options


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders to watch (each is caught up first)")
    add_common(parser)
    add_model_options(parser)


def cmd_watch(args: argparse.Namespace) -> int:
    from imgsearch.model.embedder import model_identity
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore
    from imgsearch.watching.watcher import Watcher, WatchRun, Work

    roots = watched_folders(args.paths)
    config = settings(args)
    store = MilvusStore.from_settings(config)
    if store.exists():
        config = with_indexed_model(args, config, store)
        store.check_model(model_identity(config.model))  # fail fast, before loading the model
    encoder = load_embedder(config)

    def execute(run: WatchRun, work: Work) -> Any:
        report = work(encoder, store, None)
        print(run_line(run, report.to_dict()), flush=True)
        for failure in report.failed:
            print(f"  skipped {shown(failure['path'])}: {failure['reason']}", flush=True)
        for refusal in report.refused:
            print(f"imgsearch watch: {shown(refusal)}", file=sys.stderr, flush=True)
        return report

    watcher = Watcher(roots, config, execute)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    watcher.start()
    for root in watcher.status()["roots"]:
        how = "polling" + (f" ({root['reason']})" if root["reason"] else "") if root["mode"] == "polling" else "events"
        print(f"imgsearch watch: watching {shown(root['path'])}: {how}", flush=True)
    try:
        watcher.wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
        store.close()
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def watched_folders(paths: list[str]) -> list[str]:
    """The real paths of ``paths``, each a folder; UsageError names the first that is not."""
    roots = [os.path.realpath(os.path.expanduser(path)) for path in paths]
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        raise UsageError(f"no such folder: {missing[0]}")
    return roots


def run_line(run: Any, report: dict[str, Any]) -> str:
    """One line for a finished run: what kind, and what it did."""
    parts = [
        f"{report.get(name, 0):,} {name}"
        for name in ("embedded", "moved", "copied", "removed")
        if report.get(name) or name == "embedded"
    ]
    failed = len(report.get("failed") or [])
    what = {"catch-up": "caught up", "reconcile": "reconciled", "changes": "indexed changes"}[run.kind]
    return f"imgsearch watch: {what}: {', '.join(parts)}, {failed:,} failed in {report.get('elapsed_s', 0):.1f} s"


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


COMMANDS = (
    Command(
        "watch",
        "keep the index in line with folders as they change (in the foreground; serve --watch does it in the API)",
        _watch_arguments,
        cmd_watch,
    ),
)
