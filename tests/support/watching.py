"""A real watcher over real folders for tests and bench/watch_latency.py: runs executed in the calling process, as
`imgsearch watch` does, and recorded."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from imgsearch.indexer.runner import IndexReport
from imgsearch.model.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.watching.watcher import Watcher, WatchRun, Work


@dataclass
class Recorded:
    """Every run a watcher made, with its report, in order."""

    runs: list[tuple[WatchRun, IndexReport]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, kind: str) -> list[tuple[WatchRun, IndexReport]]:
        with self.lock:
            return [(run, report) for run, report in self.runs if run.kind == kind]

    def total(self, name: str, kind: str = "changes") -> int:
        return sum(getattr(report, name) for _run, report in self.of(kind))

    def failed_paths(self) -> list[str]:
        with self.lock:
            return [failure["path"] for _run, report in self.runs for failure in report.failed]


@contextlib.contextmanager
def watching(
    roots: list[str], settings: Settings, encoder: Embedder, store: MilvusStore, watch: Callable | None = None
) -> Iterator[tuple[Watcher, Recorded]]:
    """A started watcher over ``roots`` whose catch-up has finished; stopped on the way out, also on failure."""
    recorded = Recorded()

    def execute(run: WatchRun, work: Work) -> IndexReport:
        report = work(encoder, store, None)
        with recorded.lock:
            recorded.runs.append((run, report))
        return report

    watcher = Watcher(roots, settings, execute, watch=watch)
    watcher.start()
    try:
        wait_for(lambda: len(recorded.of("catch-up")) >= len(watcher.roots), 60, "the catch-up")
        yield watcher, recorded
    finally:
        watcher.stop()


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; its value. AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.05)


def indexed_paths(store: MilvusStore) -> dict[str, dict[str, Any]]:
    """Every stored row, by path."""
    return {row["path"]: row for row in store.iter_metadata()}
