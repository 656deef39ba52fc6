"""``imgsearch index``: wire scanner -> plan -> embedder -> writer, and report what happened."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from imgsearch.indexer.embedder import EmbeddedBatch, LoadedFile, embed_in_batches, load_file, load_in_parallel
from imgsearch.indexer.plan import Plan, make_plan
from imgsearch.indexer.profile import NO_CLOCK, StageClock
from imgsearch.indexer.scanner import FileEntry, RootNotFoundError, resolve_roots, scan
from imgsearch.indexer.writer import BatchWriter
from imgsearch.media.facts import copied_facts, decoded_facts
from imgsearch.media.safe_files import within
from imgsearch.model.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.store.fields import make_row
from imgsearch.tagging.tagger import Tagger


@dataclass
class IndexReport:
    scanned: int = 0
    embedded: int = 0
    unchanged: int = 0
    moved: int = 0  # content found at a new path, old path gone: vector reused
    copied: int = 0  # content already indexed at another path that still exists: vector reused
    removed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # roots whose rows were kept instead of swept, and why
    elapsed_s: float = 0.0
    profile: dict[str, Any] | None = None  # with profile=True: seconds per stage (indexer/profile.py)
    text: dict[str, Any] | None = None  # the text stage's TextReport, when it ran (indexer/text_stage.py)
    moved_from: set[str] = field(default_factory=set, repr=False)  # old paths of moved files (not reported)

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        del report["moved_from"]
        if self.profile is None:
            del report["profile"]
        if self.text is None:
            del report["text"]
        return report


log = logging.getLogger(__name__)

# Building and timing the exported graphs costs about 2 minutes once (ViT-B/32, 2 cores) and then embeds 1.5-3x
# faster than torch: it pays for itself from about 2,000 images (docs/models.md, "When auto measures").
TUNE_FROM = 2000

ProgressCallback = Callable[[int, int], None]  # (files processed, files to process)


class Progress:
    """A tqdm bar on a terminal (images/s and ETA), and/or a callback for API jobs."""

    def __init__(self, total: int, show_bar: bool, callback: ProgressCallback | None = None, desc: str = "indexing"):
        self._bar = None
        self._done = 0
        self._total = total
        self._callback = callback
        if show_bar and total:
            from tqdm import tqdm

            # pragma below: the bar's looks are tested, but not under `make mutants` (see docs/mutation-testing.md)
            self._bar = tqdm(total=total, unit="img", desc=desc, file=sys.stderr, smoothing=0.1)  # pragma: no mutate
        if callback:
            callback(0, total)

    @property
    def done(self) -> int:
        return self._done

    def advance(self, n: int = 1) -> None:
        if n <= 0:
            return
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._callback:
            self._callback(self._done, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_index(
    roots: list[str],
    settings: Settings,
    encoder: Embedder,
    store: MilvusStore,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
    prune: bool = False,
    profile: bool = False,
    read_text: bool = True,
) -> IndexReport:
    """Bring the collection in line with the image files under ``roots``: prepare -> embed and write -> sweep,
    then (``read_text`` and IMGSEARCH_OCR=on) read the text in the pictures that have none read yet, as a second
    stage with its own progress: the rows are searchable by their vectors before it begins.

    A root that is missing, or a root or folder below it that is empty while rows are indexed under it (an
    unmounted share looks like that), sweeps nothing unless ``prune``: a missing root raises RootNotFoundError,
    an empty folder is listed in ``report.refused``.
    """
    started = time.monotonic()
    settings = settings.for_device(getattr(encoder, "device", "cpu"))  # a GPU's batch and decode threads
    job = prepare(roots, settings, encoder, store, prune)
    tune_if_it_pays(len(job.plan.to_process), encoder)
    embed_and_write(
        job, settings, encoder, store, Progress(len(job.plan.to_process), show_progress, on_progress), profile
    )
    sweep(job, store)
    if read_text and settings.ocr == "on":
        job.report.text = run_text_stage(job.present, settings, store, show_progress, on_progress)
    job.report.elapsed_s = round(time.monotonic() - started, 3)
    return job.report


def run_text_stage(
    roots: list[str],
    settings: Settings,
    store: MilvusStore,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """The text stage over ``roots`` (indexer/text_stage.py), with a bar of its own; its report as a dict."""
    from imgsearch.indexer.text_stage import read_texts
    from imgsearch.ocr.reader import OcrUnavailableError, engine_installed, shared_reader

    if not engine_installed():
        return {"unavailable": str(OcrUnavailableError())}

    bar: Progress | None = None

    def advance(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(total, show_progress, on_progress, desc="reading text")
        bar.advance(done - bar.done)

    try:
        report = read_texts(store, settings, shared_reader(), roots, on_progress=advance)
    finally:
        if bar is not None:
            bar.close()
    return asdict(report)


def tune_if_it_pays(pending: int, encoder: Embedder) -> None:
    """A job of at least TUNE_FROM images first measures the exported runtimes (onnx, openvino), once per model
    and machine; a smaller one runs with the torch setting auto chose in seconds."""
    if pending >= TUNE_FROM and getattr(encoder, "needs_tuning", False):
        log.warning("imgsearch: %d images to embed: measuring the exported runtimes first pays for itself", pending)
        encoder.tune()


@dataclass
class Job:
    """What ``prepare`` found: the roots that exist, the plan, and the report the later stages add to."""

    present: list[str]
    plan: Plan
    report: IndexReport


def prepare(roots: list[str], settings: Settings, encoder: Embedder, store: MilvusStore, prune: bool) -> Job:
    """Scan the roots and plan against the stored rows: what to embed, reuse, keep, and sweep."""
    roots = resolve_roots(roots, allow_missing=True)
    store.ensure_collection(encoder.name, encoder.dim, encoder.fingerprint, record_fingerprint=True)
    report = IndexReport()
    stored = list(store.iter_metadata())
    present = [root for root in roots if os.path.lexists(root)]
    if not prune:
        check_roots_exist(roots, stored)
    store.add_roots(present)  # the API serves files only from recorded roots

    scanned = scan(present, settings.max_file_bytes)
    files = scanned.files
    report.scanned = len(files) + len(scanned.failed)  # every entry met is counted once, skipped ones too
    report.failed.extend(scanned.failed)
    plan = make_plan(files, stored, roots, scanned.keep)
    if not prune:
        for folder, count in _emptied_folders(plan.stale, files, present).items():
            report.refused.append(
                f"{folder} has no image files now, but {count} are indexed under it (an unmounted share looks "
                f"like this); they are kept. If they were removed on purpose, run again with --prune"
            )
            plan.stale = [row for row in plan.stale if not within(row["path"], [folder])]
    report.unchanged = len(plan.unchanged)
    return Job(present, plan, report)


def embed_and_write(
    job: Job, settings: Settings, encoder: Embedder, store: MilvusStore, progress: Progress, profile: bool
) -> None:
    """Decode and embed the new and changed files, copy the vectors of content already indexed, write rows."""
    plan, report, present = job.plan, job.report, job.present
    stale_paths = {row["path"] for row in plan.stale}
    clock = StageClock() if profile else NO_CLOCK
    writer = BatchWriter(store, batch_size=settings.batch_size, clock=clock, tagger=Tagger.for_store(store, encoder))
    reused: list[LoadedFile] = []

    def load(entry: FileEntry) -> LoadedFile:
        return load_file(
            entry,
            plan.rows_by_hash.__contains__,
            encoder.image_size,
            settings.max_image_pixels,
            present,
            settings.max_file_bytes,
            settings.max_decoded_bytes,
            clock,
        )

    loaded = load_in_parallel(
        plan.to_process, settings.decode_workers, 2 * settings.batch_size + settings.decode_workers, load, clock
    )
    embedding_started = time.monotonic()
    try:
        for item in embed_in_batches(loaded, encoder, settings.batch_size, clock):
            if isinstance(item, EmbeddedBatch):
                writer.add(
                    [
                        make_row(
                            decoded_facts(
                                f.entry.path, f.entry.size, f.entry.mtime_ns, f.content_hash, f.decoded, present
                            ),
                            vector,
                        )
                        for f, vector in zip(item.files, item.vectors)
                    ]
                )
                report.embedded += len(item.files)
                progress.advance(len(item.files))
            elif item.error is not None:
                report.failed.append({"path": item.entry.path, "reason": item.error})
                progress.advance()
            else:
                reused.append(item)
                if len(reused) >= settings.batch_size:
                    _write_reused(reused, plan.rows_by_hash, stale_paths, store, writer, report, present)
                    progress.advance(len(reused))
                    reused = []
        _write_reused(reused, plan.rows_by_hash, stale_paths, store, writer, report, present)
        progress.advance(len(reused))
        writer.flush()
    finally:
        progress.close()
    if profile:
        report.profile = clock.report(time.monotonic() - embedding_started, report.embedded)


def sweep(job: Job, store: MilvusStore) -> None:
    """Remove the rows of files that are gone. Last: a run killed before this point leaves old rows, never missing
    ones. Each path is looked at again right before its row goes, so a file that another indexer or the user put
    back is never dropped."""
    report = job.report
    gone = [row for row in job.plan.stale if not os.path.lexists(row["path"])]
    store.delete([row["id"] for row in gone])
    gone_paths = {row["path"] for row in gone}
    came_back = len(report.moved_from - gone_paths)  # counted as moved, but the old file is there again
    report.moved -= came_back
    report.copied += came_back
    report.removed = len(gone_paths - report.moved_from)  # a moved file's old row is not a removal
    if report.embedded or report.moved or report.copied or report.removed:
        store.flush()


def _emptied_folders(stale: list[dict[str, Any]], files: list[FileEntry], roots: list[str]) -> dict[str, int]:
    """Folders with no image files now although indexed images lay in them, with how many: a root with none
    left, or an empty folder below one. Both are what an unmounted share looks like; a folder deleted as a
    whole is not one of them."""
    bare_roots = [root for root in roots if not any(within(f.path, [root]) for f in files)]
    counts: dict[str, int] = {}
    empty: dict[str, bool] = {}
    for row in stale:
        folder = next((root for root in bare_roots if within(row["path"], [root])), None)
        if folder is None:
            folder = os.path.dirname(row["path"])
            while not os.path.lexists(folder) and folder not in roots and within(folder, roots):
                folder = os.path.dirname(folder)
            if folder in roots or not within(folder, roots):
                continue  # an ordinary deletion
            if folder not in empty:
                try:
                    empty[folder] = os.path.isdir(folder) and not os.listdir(folder)
                except OSError:
                    empty[folder] = False
            if not empty[folder]:
                continue
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def check_roots_exist(roots: list[str], stored_rows: Iterable[dict[str, Any]]) -> None:
    """Raise RootNotFoundError for the first missing root, saying how many images are indexed under it."""
    missing = [root for root in resolve_roots(roots, allow_missing=True) if not os.path.lexists(root)]
    if missing:
        indexed = sum(within(row["path"], missing[:1]) for row in stored_rows)
        raise RootNotFoundError(missing[0], indexed)


def _write_reused(items, rows_by_hash, stale_paths, store, writer, report, roots) -> None:
    """Files whose content is already indexed: copy the stored vector instead of embedding again."""
    if not items:
        return
    sources = store.get([rows_by_hash[item.content_hash]["id"] for item in items], with_vectors=True)
    rows = []
    for item in items:
        source_id = rows_by_hash[item.content_hash]["id"]
        source = sources.get(source_id)
        if source is None:  # deleted by a concurrent writer since the plan was made: report it, embed next run
            report.failed.append({"path": item.entry.path, "reason": "indexed copy vanished during the run; re-run"})
            continue
        rows.append(
            make_row(
                copied_facts(item.entry.path, item.entry.size, item.entry.mtime_ns, source, roots), source["vector"]
            )
        )
        if source["path"] == item.entry.path:  # touched, content the same
            report.unchanged += 1
        elif source["path"] in stale_paths:
            report.moved += 1
            report.moved_from.add(source["path"])
        else:
            report.copied += 1
    writer.add(rows)
