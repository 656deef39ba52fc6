"""The API's watcher (``imgsearch serve --watch``, ``imgsearch up``): its runs are jobs of the API's one-at-a-time
queue, beside POST /index and tagging, so nothing is indexed twice at once, and GET /watch reports it."""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from imgsearch.errors import ImgsearchError
from imgsearch.indexer.runner import IndexReport
from imgsearch.search_api.services.jobs import JobManager
from imgsearch.settings import Settings
from imgsearch.watching.watcher import Watcher, WatchRun, Work

log = logging.getLogger("uvicorn.error")

QUEUE_FULL_RETRY_S = 5.0


class WatchService:
    """Watches ``roots`` and queues each run as a ``watch`` job of ``jobs``."""

    def __init__(self, roots: list[str], settings: Settings, jobs: JobManager):
        self._jobs = jobs
        self._stopping = threading.Event()
        self.watcher = Watcher(roots, settings, self._execute, text_stage=jobs.text_stage)

    def start(self) -> None:
        self.watcher.start()
        for root in self.watcher.status()["roots"]:
            log.info("imgsearch: watching %s (%s)", root["path"], root["mode"])

    def stop(self) -> None:
        self._stopping.set()
        self.watcher.stop()

    def _execute(self, run: WatchRun, work: Work) -> IndexReport | None:
        """Queue ``work`` and wait for it; None if the API stops first. A full queue is tried again."""
        while not self._stopping.is_set():
            try:
                future = self._jobs.submit_watch(run.roots, work)
                break
            except ImgsearchError as exc:  # JobQueueFullError: POST /index filled the queue
                log.info("imgsearch: watch run waits: %s", exc)
                self._stopping.wait(QUEUE_FULL_RETRY_S)
        else:
            return None
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    future.cancel()
                    return None
            except concurrent.futures.CancelledError:
                return None

    def status(self) -> dict:
        return self.watcher.status()
