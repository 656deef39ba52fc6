"""Jobs started through the API (indexing folders, tagging from a label set), run one at a time on a background
thread, from a bounded queue: two jobs never write at once."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgsearch.errors import ImgsearchError
from imgsearch.indexer.runner import IndexReport, ProgressCallback, run_index
from imgsearch.indexer.text_stage import BackgroundReader
from imgsearch.media.safe_files import within
from imgsearch.model.embedder import Embedder
from imgsearch.search_api.schemas import IndexJob
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.tagging.jobs import remove_label_set, run_tagging, save_label_set
from imgsearch.tagging.labels import LabelSet

MAX_QUEUED_JOBS = 16
MAX_FINISHED_JOBS = 100  # older finished jobs are forgotten
MAX_REPORTED_FAILURES = 1000  # per job; the rest are counted in report["failed_not_listed"]
MAX_PATH_CHARS = 4096
MAX_PATH_PARTS = 256
MAX_NAME_BYTES = 255  # NAME_MAX on Linux, macOS and Windows file systems


class PathNotAllowedError(ImgsearchError):
    """A path outside IMGSEARCH_ALLOWED_ROOTS (403), said the same whether it exists or not."""


class UnusablePathError(ImgsearchError):
    """A path that could never name a file here (422)."""


class PathNotFoundError(ImgsearchError):
    """A path inside the allowed roots that does not exist (404)."""


class JobQueueFullError(ImgsearchError):
    """Too many jobs are waiting (429)."""


def allowed_paths(raw_paths: list[str], allowed_roots: list[str]) -> list[str]:
    """The real paths of ``raw_paths``, each checked against ``allowed_roots``, with nested ones merged.

    Blocking (it resolves links on disk): call it off the event loop.
    """
    resolved: list[str] = []
    for raw in raw_paths:
        shown = raw[:200]
        if not raw.strip() or "\x00" in raw or len(raw) > MAX_PATH_CHARS:
            raise UnusablePathError(f"not a usable path: {shown!r}")
        if not os.path.isabs(raw):
            raise UnusablePathError(f"{shown!r} is not an absolute path ('~' and relative paths are not expanded)")
        parts = Path(raw).parts
        if len(parts) > MAX_PATH_PARTS or any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
            raise UnusablePathError(
                f"{shown!r} has more than {MAX_PATH_PARTS} parts or a part over {MAX_NAME_BYTES} bytes"
            )
        try:
            path = os.path.realpath(raw)  # resolves '..' and links before the check
        except (OSError, ValueError) as exc:
            raise UnusablePathError(f"{shown!r}: {exc}") from None
        if not within(path, allowed_roots):
            raise PathNotAllowedError(f"{shown} is outside the allowed roots ({', '.join(allowed_roots)})")
        if not os.path.exists(path):
            raise PathNotFoundError(f"{shown}: no such file or directory")
        resolved.append(path)
    unique = sorted(set(resolved))
    return [p for p in unique if not within(p, [other for other in unique if other != p])]


class JobManager:
    def __init__(self, settings: Settings, encoder: Embedder, store: MilvusStore):
        self._settings = settings
        self._encoder = encoder
        self._store = store
        self.allowed_roots = [os.path.realpath(Path(root).expanduser()) for root in settings.allowed_roots]
        self._jobs: dict[str, IndexJob] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-job")
        # The text stage of every job (and of what an earlier process left unread), behind the jobs and queries.
        self.text_stage = (
            BackgroundReader(settings, lambda: self._model_and_store()[1], busy=lambda: bool(self.unfinished()))
            if settings.ocr == "on"
            else None
        )
        if self.text_stage is not None:
            self.text_stage.start()

    def use(self, encoder: Embedder, store: MilvusStore) -> None:
        """Jobs that start from now on write to ``store`` with ``encoder`` (the API switched collections)."""
        with self._lock:
            self._encoder, self._store = encoder, store

    def _model_and_store(self) -> tuple[Embedder, MilvusStore]:
        with self._lock:
            return self._encoder, self._store

    def submit(self, paths: list[str]) -> IndexJob:
        """Queue an indexing job, or return the queued one for the same paths; raises JobQueueFullError."""
        job = IndexJob(job_id=uuid.uuid4().hex, state="queued", paths=paths)
        return self._queue(job, functools.partial(self._index, paths))

    def submit_tagging(self, label_set: LabelSet | None, remove: str | None = None) -> IndexJob:
        """Queue a job that stores ``label_set`` (or forgets the set ``remove``) and tags every image again."""
        name = label_set.name if label_set is not None else remove
        job = IndexJob(job_id=uuid.uuid4().hex, kind="tag", state="queued", label_set=name)
        return self._queue(job, functools.partial(self._tag, label_set, remove))

    def submit_watch(
        self, paths: list[str], work: Callable[[Embedder, MilvusStore, ProgressCallback], IndexReport]
    ) -> Future[IndexReport]:
        """Queue a watcher's run (``paths``: the roots it touches, for the job list); the future of its report.

        It waits its turn with every other job, so nothing is indexed twice at once. Raises JobQueueFullError."""
        result: Future[IndexReport] = Future()

        def run(progress: ProgressCallback) -> dict[str, Any]:
            if not result.set_running_or_notify_cancel():
                return {"state": "failed", "error": "cancelled"}
            try:
                report = work(*self._model_and_store(), progress)
            except BaseException as exc:
                result.set_exception(exc)
                raise
            result.set_result(report)
            return ending(report)

        self._queue(IndexJob(job_id=uuid.uuid4().hex, kind="watch", state="queued", paths=paths), run)
        return result

    def unfinished(self) -> list[IndexJob]:
        """The jobs queued or running, in the order they will run."""
        with self._lock:
            return [job.model_copy() for job in self._jobs.values() if job.state in ("queued", "running")]

    def get(self, job_id: str) -> IndexJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job else None

    def _queue(self, job: IndexJob, work: Callable[[ProgressCallback], dict[str, Any]]) -> IndexJob:
        with self._lock:
            queued = [known for known in self._jobs.values() if known.state == "queued"]
            for known in queued:
                if job.kind == "index" and known.kind == "index" and known.paths == job.paths:
                    return known.model_copy()
            if len(queued) >= MAX_QUEUED_JOBS:
                raise JobQueueFullError(f"{len(queued)} jobs are already waiting; try again later")
            self._jobs[job.job_id] = job
        self._executor.submit(self._execute, job.job_id, work)
        return job.model_copy()

    def _update(self, job_id: str, **changes) -> None:
        with self._lock:
            job = self._jobs[job_id]
            self._jobs[job_id] = job.model_copy(update=changes)

    def _execute(self, job_id: str, work: Callable[[ProgressCallback], dict[str, Any]]) -> None:
        """Run ``work``; the job ends with what it returns (state, report, error), or failed with its error."""
        self._update(job_id, state="running")
        try:
            ending = work(lambda done, total: self._update(job_id, processed=done, total=total))
        except ImgsearchError as exc:
            self._update(job_id, state="failed", error=str(exc))
        except Exception as exc:  # a job must end in a state the client can read
            self._update(job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._update(job_id, **ending)
        self._forget_old_jobs()
        if self.text_stage is not None:
            self.text_stage.wake()

    def _index(self, paths: list[str], progress: ProgressCallback) -> dict[str, Any]:
        # Checked again: a link under an allowed root may have been re-pointed while the job waited.
        encoder, store = self._model_and_store()
        report = run_index(
            allowed_paths(paths, self.allowed_roots),
            self._settings,
            encoder,
            store,
            on_progress=progress,
            read_text=False,  # self.text_stage reads it, after this and every queued job
        )
        return ending(report)

    def _tag(self, label_set: LabelSet | None, remove: str | None, progress: ProgressCallback) -> dict[str, Any]:
        encoder, store = self._model_and_store()
        if label_set is not None:
            save_label_set(store, label_set)
        if remove is not None:
            remove_label_set(store, remove)
        report = run_tagging(store, encoder, label_set, on_progress=progress)
        return {"state": "done", "report": dataclasses.asdict(report)}

    def _forget_old_jobs(self) -> None:
        with self._lock:
            finished = [job_id for job_id, job in self._jobs.items() if job.state in ("done", "failed")]
            for job_id in finished[:-MAX_FINISHED_JOBS]:  # dicts keep insertion order: the oldest first
                del self._jobs[job_id]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.text_stage is not None:
            self.text_stage.stop()


def ending(report: IndexReport) -> dict[str, Any]:
    """How an indexing job ends: its state, its report (failures listed up to MAX_REPORTED_FAILURES), its error."""
    summary = report.to_dict()
    summary["failed_not_listed"] = max(0, len(summary["failed"]) - MAX_REPORTED_FAILURES)
    summary["failed"] = summary["failed"][:MAX_REPORTED_FAILURES]
    return {
        "state": "failed" if report.refused else "done",
        "report": summary,
        "error": "; ".join(report.refused) or None,
    }
