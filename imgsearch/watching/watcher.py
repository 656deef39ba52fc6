"""The watcher: changes from each root's source, settled into batches, run by the incremental indexer through an
executor (the API's one-at-a-time job queue, or the foreground command itself), and every root reconciled at start
(the catch-up) and every ``IMGSEARCH_RESCAN_MINUTES``.

One thread owns the settler and runs the batches, so a burst of new files becomes a few runs: what settles while
one run goes on waits for the next."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from imgsearch.indexer.runner import IndexReport, ProgressCallback
from imgsearch.indexer.scanner import RootNotFoundError, is_image_path
from imgsearch.indexer.text_stage import BackgroundReader
from imgsearch.model.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.watching.filesystems import polling_reason
from imgsearch.watching.settle import Settled, Settler
from imgsearch.watching.sources import Mode, RootSource
from imgsearch.watching.sweeping import may_sweep, root_problem

log = logging.getLogger(__name__)

RETRY_YOUNG_S = 30.0  # a file that failed to decode within this of its last write is tried once more, this later
MAX_LISTED_FAILURES = 100
# Names of sidecars and partial transfers: when one goes (renamed to its real name, or written over), no run is
# needed for it. Any other name that goes may have been a folder, whose rows go with it.
NOT_FOLDERS = frozenset({".xmp", ".txt", ".json", ".aae", ".thm", ".tmp", ".part", ".crdownload", ".partial", ".swp"})
Work = Callable[[Embedder, MilvusStore, "ProgressCallback | None"], IndexReport]


@dataclass
class WatchRun:
    """One run of the indexer: a reconcile of whole roots, or the files that settled and the paths that are gone."""

    kind: Literal["catch-up", "reconcile", "changes"]
    roots: list[str]
    files: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


class Executor(Protocol):
    def __call__(self, run: WatchRun, work: Work) -> IndexReport | None:
        """Run ``work`` one at a time with every other writer; its report, or None if it never ran."""


@dataclass
class RootState:
    path: str
    mode: Mode
    reason: str | None = None  # why it is polled
    last_event: float | None = None  # wall-clock times
    last_reconcile: float | None = None
    problem: str | None = None  # why its rows are kept (missing, emptied), if so


class Watcher:
    """Watches ``roots`` until ``stop()``; ``execute`` runs each batch."""

    def __init__(
        self,
        roots: list[str],
        settings: Settings,
        execute: Executor,
        watch: Callable | None = None,
        text_stage: BackgroundReader | None = None,
    ):
        """``text_stage``: the reader of text in pictures the runs wake (the API's); by default, with IMGSEARCH_OCR=on,
        one of the watcher's own, on the store its runs last wrote to."""
        self.settings = settings
        self._execute = execute
        self._stop = threading.Event()
        self._changes: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._settler = Settler(settings.watch_settle_seconds)
        self._lock = threading.Lock()  # guards the states, the counters and what status() reads
        unique = sorted({os.path.realpath(root) for root in roots})
        unique = [root for root in unique if not _under([root], [other for other in unique if other != root])]
        self.roots = {root: self._root_state(root) for root in unique}  # a root inside another is watched by it
        self._next_reconcile = {root: 0.0 for root in self.roots}  # the catch-up: at once
        self._running: WatchRun | None = None
        self._pending = 0
        self.runs = 0
        self.failed: list[dict[str, str]] = []
        self.last_report: dict[str, Any] | None = None
        self._sources = [
            RootSource(
                root,
                state.mode,
                settings.watch_poll_seconds,
                lambda root, changes: self._changes.put(("changes", root, changes)),
                lambda root, what, why: self._changes.put((what, root, why)),
                self._stop,
                watch,
            )
            for root, state in self.roots.items()
        ]
        self._thread = threading.Thread(target=self._loop, name="watcher", daemon=True)
        self._store: MilvusStore | None = None  # what the last run wrote to
        self._own_text_stage = text_stage is None and settings.ocr == "on"
        self.text_stage = text_stage
        if self._own_text_stage:
            self.text_stage = BackgroundReader(settings, lambda: self._store, busy=lambda: self._running is not None)

    def _root_state(self, root: str) -> RootState:
        forced = self.settings.watch_mode
        reason = None if forced == "events" else ("IMGSEARCH_WATCH_MODE=polling" if forced == "polling" else None)
        if forced == "auto":
            reason = polling_reason(root)
        if reason is not None:
            log.warning("imgsearch watch: %s is polled every %g s: %s", root, self.settings.watch_poll_seconds, reason)
        return RootState(root, "polling" if reason else "events", reason)

    def start(self) -> None:
        for source in self._sources:
            source.start()
        self._thread.start()
        if self._own_text_stage:
            self.text_stage.start(first_pass=False)  # woken after the catch-up run

    def wait(self) -> None:
        """Block until ``stop()`` (Ctrl-C still reaches the thread that waits)."""
        while not self._stop.wait(1.0):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        for source in self._sources:
            source.join(timeout)
        if self._own_text_stage:
            self.text_stage.stop(timeout)

    def reconcile_soon(self, root: str) -> None:
        """Index ``root`` whole (incrementally) as soon as the watcher is free, as the periodic reconcile does."""
        self._changes.put(("reconcile", os.path.realpath(root), None))

    def status(self) -> dict[str, Any]:
        """What GET /watch and the foreground command report."""
        with self._lock:
            running = self._running
            return {
                "roots": [
                    {
                        "path": state.path,
                        "mode": state.mode,
                        "reason": state.reason,
                        "last_event": _iso(state.last_event),
                        "last_reconcile": _iso(state.last_reconcile),
                        "problem": state.problem,
                    }
                    for state in self.roots.values()
                ],
                "pending": self._pending,
                "indexing": running.kind if running else None,
                "indexing_files": len(running.files) if running else 0,
                "runs": self.runs,
                "rescan_minutes": self.settings.rescan_minutes,
                "last_report": self.last_report,
                "failed": list(self.failed),
            }

    # The watcher thread: everything below runs on it.

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_changes(self._wait())
            now = time.monotonic()
            settled = self._settler.due(now, _look)
            with self._lock:
                self._pending = len(self._settler)
            if settled:
                self._run_changes(settled)
            for root, when in self._next_reconcile.items():
                if when <= time.monotonic() and not self._stop.is_set():
                    self._reconcile(root)

    def _wait(self) -> float:
        """Seconds to block for the next change: until the settler or a reconcile is due."""
        now = time.monotonic()
        waits = [max(0.0, min(self._next_reconcile.values()) - now), 5.0]
        if (look := self._settler.next_look(now)) is not None:
            waits.append(look)
        return min(waits)

    def _take_changes(self, timeout: float) -> None:
        try:
            item = self._changes.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._take(*item)
            try:
                item = self._changes.get_nowait()
            except queue.Empty:
                return

    def _take(self, what: str, root: str, detail: Any) -> None:
        if what == "later":
            self._settler.again_at(*detail)
            return
        state = self.roots[root]
        if what == "polling":
            with self._lock:
                state.mode, state.reason = "polling", detail
            self._next_reconcile[root] = 0.0  # events may have been missed while watches ran out
            return
        if what == "reconcile":
            self._next_reconcile[root] = 0.0
            return
        if what == "remounted":
            self._next_reconcile[root] = time.monotonic() + self.settings.watch_settle_seconds
            return
        now = time.monotonic()
        with self._lock:
            state.last_event = time.time()
        for change, path in detail:
            self._changed(change, path, now)

    def _changed(self, change: str, path: str, now: float) -> None:
        if is_image_path(path):
            self._settler.changed(path, _look(path), now)
        elif change != "deleted" and os.path.isdir(path) and not os.path.islink(path):
            for found in _images_below(path):  # a folder moved in: its files raise no events of their own
                self._settler.changed(found, _look(found), now)
        elif change == "deleted" and os.path.splitext(path)[1].lower() not in NOT_FOLDERS:
            self._settler.changed(path, None, now)  # maybe a folder: its rows go, if any

    def _run_changes(self, settled: Settled) -> None:
        roots = list(self.roots)
        gone = [path for path in settled.gone if any(may_sweep(path, root) for root in roots)]
        if kept := len(settled.gone) - len(gone):
            log.warning("imgsearch watch: %d paths gone under a missing or emptied folder: their rows are kept", kept)
            with self._lock:
                for root, state in self.roots.items():
                    state.problem = root_problem(root)
        if not settled.files and not gone:
            return
        run = WatchRun("changes", [r for r in roots if _under(settled.files + gone, [r])], settled.files, gone)
        report = self._run(
            run, lambda encoder, store, progress: _index_paths(run, self.settings, encoder, store, progress)
        )
        if report is None:  # never ran (stopping, or the queue was full): try again
            for path in settled.files:
                self._settler.changed(path, _look(path), time.monotonic())
            for path in gone:
                self._settler.changed(path, None, time.monotonic())

    def _reconcile(self, root: str) -> None:
        kind = "catch-up" if self.roots[root].last_reconcile is None else "reconcile"
        self._next_reconcile[root] = time.monotonic() + self.settings.rescan_minutes * 60
        problem = root_problem(root)
        with self._lock:
            self.roots[root].problem = problem
        if problem is not None and not os.path.isdir(root):
            return
        run = WatchRun(kind, [root])
        report = self._run(
            run, lambda encoder, store, progress: _index_root(root, self.settings, encoder, store, progress)
        )
        if report is not None:
            with self._lock:
                self.roots[root].last_reconcile = time.time()
                self.roots[root].problem = "; ".join(report.refused) or problem

    def _run(self, run: WatchRun, work: Work) -> IndexReport | None:
        with self._lock:
            self._running = run
        try:
            report = self._execute(run, self._keeping_young_failures(work))
        except Exception as exc:  # a failed run is reported, and the watcher goes on
            log.warning("imgsearch watch: %s run failed: %s", run.kind, exc)
            report = None
        if self.text_stage is not None:
            self.text_stage.wake()
        with self._lock:
            self._running = None
            if report is not None:
                self.runs += 1
                self.last_report = {"kind": run.kind, **report.to_dict()}
                self.failed = (self.failed + report.failed)[-MAX_LISTED_FAILURES:]
        return report

    def _keeping_young_failures(self, work: Work) -> Work:
        """``work``, with files that failed to decode while they may still have been written taken out of the
        report and looked at again later: a copy in pieces is never listed as failed."""

        def wrapped(encoder: Embedder, store: MilvusStore, progress: ProgressCallback | None) -> IndexReport:
            self._store = store
            report = work(encoder, store, progress)
            now, wall = time.monotonic(), time.time()
            listed = []
            for failure in report.failed:
                facts = _look(failure["path"])
                if facts is not None and wall - facts[1] / 1e9 < RETRY_YOUNG_S:
                    self._changes.put(("later", "", (failure["path"], now + RETRY_YOUNG_S)))
                else:
                    listed.append(failure)
            report.failed = listed
            return report

        return wrapped


def _index_root(root: str, settings: Settings, encoder: Embedder, store: MilvusStore, progress) -> IndexReport:
    from imgsearch.indexer.runner import run_index

    try:
        return run_index([root], settings, encoder, store, on_progress=progress, read_text=False)  # text_stage
    except RootNotFoundError as exc:
        report = IndexReport()
        report.refused.append(str(exc))
        return report


def _index_paths(run: WatchRun, settings: Settings, encoder: Embedder, store: MilvusStore, progress) -> IndexReport:
    from imgsearch.indexer.changed import run_index_paths

    return run_index_paths(run.files + run.gone, run.roots, settings, encoder, store, on_progress=progress)


def _look(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns)


def _images_below(folder: str) -> list[str]:
    found = []
    for directory, _subdirs, files in os.walk(folder, followlinks=False):
        found.extend(os.path.join(directory, name) for name in files if is_image_path(name))
    return found


def _under(paths: list[str], roots: list[str]) -> bool:
    """Whether any of ``paths`` lies below any of ``roots``."""
    prefixes = tuple(root.rstrip(os.sep) + os.sep for root in roots)
    return bool(prefixes) and any(path.startswith(prefixes) for path in paths)


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
