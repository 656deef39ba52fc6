"""Indexing jobs started through the API, run one at a time on a background thread."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from imgsearch_core.encoder import Encoder
from imgsearch_core.errors import ImgsearchError
from imgsearch_core.milvus_store import MilvusStore
from imgsearch_core.settings import Settings
from indexer.runner import run_index
from search_api.schemas import IndexJob


class JobManager:
    def __init__(self, settings: Settings, encoder: Encoder, store: MilvusStore):
        self._settings = settings
        self._encoder = encoder
        self._store = store
        self._jobs: dict[str, IndexJob] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-job")

    def submit(self, paths: list[str]) -> IndexJob:
        job = IndexJob(job_id=uuid.uuid4().hex, state="queued", paths=paths)
        with self._lock:
            self._jobs[job.job_id] = job
        self._executor.submit(self._run, job.job_id)
        return job.model_copy()

    def get(self, job_id: str) -> IndexJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job else None

    def _update(self, job_id: str, **changes) -> None:
        with self._lock:
            job = self._jobs[job_id]
            self._jobs[job_id] = job.model_copy(update=changes)

    def _run(self, job_id: str) -> None:
        self._update(job_id, state="running")
        paths = self._jobs[job_id].paths
        try:
            report = run_index(
                paths, self._settings, self._encoder, self._store,
                on_progress=lambda done, total: self._update(job_id, processed=done, total=total),
            )
        except ImgsearchError as exc:
            self._update(job_id, state="failed", error=str(exc))
        except Exception as exc:  # a job must end in a state the client can read
            self._update(job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._update(job_id, state="done", report=report.to_dict())

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
