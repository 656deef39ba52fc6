"""The incremental indexer over a few paths that changed under indexed roots: what a watcher runs.

The same stages as ``imgsearch index`` (runner.py): plan -> embed and write -> sweep, with the same rules for
links, sidecars and hostile files, because the roots they are judged against are the watched roots, not the paths
scanned. Only the scan is narrower: the paths named (files, or folders walked as a whole), and only rows at or
under those paths can be swept. Move detection is the plan's: content already indexed anywhere keeps its vector.
"""

from __future__ import annotations

import os
import time

from imgsearch.indexer.plan import make_plan
from imgsearch.indexer.runner import (
    IndexReport,
    Job,
    Progress,
    ProgressCallback,
    embed_and_write,
    sweep,
    tune_if_it_pays,
)
from imgsearch.indexer.scanner import resolve_roots, scan
from imgsearch.media.safe_files import within
from imgsearch.model.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore

PLAN_FIELDS = ["id", "path", "content_hash", "size", "mtime_ns"]  # what the plan and the sweep read of a row


def run_index_paths(
    paths: list[str],
    roots: list[str],
    settings: Settings,
    encoder: Embedder,
    store: MilvusStore,
    on_progress: ProgressCallback | None = None,
) -> IndexReport:
    """Bring the rows at or under ``paths`` in line with the disk; ``paths`` lie under ``roots``.

    A path that exists is scanned (a folder recursively); a path that is gone sweeps the rows at or under it.
    Deciding that a gone path may sweep (its root is there and not emptied) is the caller's: see
    ``imgsearch.watching.batches``.
    """
    started = time.monotonic()
    settings = settings.for_device(getattr(encoder, "device", "cpu"))
    roots = resolve_roots(roots, allow_missing=True)
    present = [root for root in roots if os.path.isdir(root)]
    paths = sorted({os.path.abspath(path) for path in paths if within(os.path.abspath(path), present)})
    store.ensure_collection(encoder.name, encoder.dim, encoder.fingerprint, record_fingerprint=True)
    store.add_roots(present)  # the API serves files only from recorded roots
    stored = list(store.iter_rows(fields=PLAN_FIELDS))
    scanned = scan([path for path in paths if os.path.lexists(path)], settings.max_file_bytes, trusted=present)
    report = IndexReport(scanned=len(scanned.files) + len(scanned.failed), failed=list(scanned.failed))
    plan = make_plan(scanned.files, stored, paths, scanned.keep)
    report.unchanged = len(plan.unchanged)
    job = Job(present, plan, report)
    tune_if_it_pays(len(plan.to_process), encoder)
    embed_and_write(job, settings, encoder, store, Progress(len(plan.to_process), False, on_progress), False)
    sweep(job, store)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report
