"""The indexer's second stage: read the text in the pictures whose rows hold none read from their content yet.

The embedding stage writes rows with ``text_read_from`` empty (new content) or copied from the row the content
came from (a moved or copied file keeps its text). This stage reads every row under the roots whose
``text_read_from`` is not its ``content_hash``, and writes what it read in small batches, so a run killed here
loses at most a batch: the next run finds those rows still unread and goes on. A file that cannot be read
(gone, hostile, undecodable) is recorded as read with no text, so it is not tried again until its content
changes; a file whose content changed since it was embedded is left for the next embedding.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgsearch.errors import ImgsearchError
from imgsearch.media.safe_files import UnsafeFileError, within
from imgsearch.ocr.reader import OcrUnavailableError, ReadText, TextReader
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore

log = logging.getLogger(__name__)

WRITE_EVERY = 8  # pictures read per write: what a killed run reads again
_FIELDS = ["id", "path", "content_hash", "text_read_from"]


@dataclass
class TextReport:
    pending: int = 0  # rows with no text read from their content when the stage began
    read: int = 0  # of them, read now
    with_text: int = 0  # of those, with text in them
    gated: int = 0  # of those, judged free of text by the gate alone
    failed: int = 0  # files that could not be read (recorded as without text)
    elapsed_s: float = 0.0


def unread_rows(store: MilvusStore, roots: list[str]) -> list[dict[str, Any]]:
    """The rows under ``roots`` whose text has not been read from their current content, by path. A row written
    for new content has ``text_read_from`` empty (a moved or copied one keeps its source's), so only those are
    listed: a pass over a library read to the end costs next to nothing."""
    rows = [
        row
        for row in store.iter_rows(fields=_FIELDS, filter_expr='text_read_from == ""')
        if row["text_read_from"] != row["content_hash"] and within(row["path"], roots)
    ]
    return sorted(rows, key=lambda row: row["path"])


def read_texts(
    store: MilvusStore,
    settings: Settings,
    reader: TextReader,
    roots: list[str],
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TextReport:
    """Read the text in every unread picture under ``roots`` and write it (see the module docstring).

    ``on_progress(done, total)`` after each picture; ``should_stop`` is asked before each picture (a background
    reader that yields to an embedding job, or shuts down, ends early; the rest is read next time)."""
    started = time.monotonic()
    rows = unread_rows(store, roots)
    report = TextReport(pending=len(rows))
    if on_progress:
        on_progress(0, len(rows))
    done: dict[str, tuple[str, str]] = {}
    for row in rows:
        if should_stop():
            break
        digest, read = _read_one(row, settings, reader, roots, report)
        if digest is not None:
            done[row["id"]] = (read.text, digest)
        if len(done) >= WRITE_EVERY:
            store.set_image_text(done)
            done = {}
        report.read += 1
        if on_progress:
            on_progress(report.read, len(rows))
    if done:
        store.set_image_text(done)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def _read_one(
    row: dict[str, Any], settings: Settings, reader: TextReader, roots: list[str], report: TextReport
) -> tuple[str | None, ReadText]:
    """(content hash read, text) of one row's file; (None, ...) when its content changed since it was embedded."""
    try:
        digest, read = reader.read_file(
            row["path"], roots, settings.max_file_bytes, settings.max_image_pixels, settings.max_decoded_bytes
        )
    except OcrUnavailableError:
        raise
    except (ImgsearchError, UnsafeFileError, OSError) as exc:
        log.info("text stage: %s not read: %s", row["path"], exc)
        report.failed += 1
        return row["content_hash"], ReadText()
    if digest != row["content_hash"]:
        return None, read
    report.with_text += bool(read.lines)
    report.gated += read.gated
    return digest, read


class BackgroundReader:
    """The text stage on a thread of its own, for a long-running process (``serve --watch``, ``up``, ``watch``,
    ``POST /index``): woken after each indexing run, it reads what is unread under the store's recorded roots.

    It runs below the embedding stage and queries: its thread (and the engine's threads it starts) runs at nice
    +10, and it stops between pictures while ``busy()`` says an indexing job is queued or running, resuming after.
    """

    def __init__(
        self,
        settings: Settings,
        store_of: Callable[[], MilvusStore | None],
        busy: Callable[[], bool] = lambda: False,
        idle_poll_s: float = 1.0,
    ):
        self._settings = settings
        self._store_of = store_of
        self._busy = busy
        self._poll_s = idle_poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imgsearch-text-stage", daemon=True)
        self.last: TextReport | None = None  # the last pass's report
        self.running = False

    def start(self, first_pass: bool = True) -> None:
        """Start the thread; ``first_pass``: read at once what an earlier process left unread."""
        self._thread.start()
        if first_pass:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        _lower_this_thread()
        reader = TextReader(threads=1)
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set() and self._busy():
                self._stop.wait(self._poll_s)
            if self._stop.is_set():
                break
            store = self._store_of()
            if store is None:  # no indexing run has named its store yet
                continue
            self.running = True
            try:
                self.last = read_texts(
                    store,
                    self._settings,
                    reader,
                    store.indexed_roots(),
                    should_stop=lambda: self._stop.is_set() or self._busy(),
                )
                if self._busy():  # yielded to a job: go on after it
                    self._wake.set()
            except OcrUnavailableError as exc:
                log.warning("imgsearch: %s", exc)
                return
            except Exception:  # noqa: BLE001 - the next wake tries again; searches are not affected
                log.warning("text stage: a pass failed; it is tried again after the next indexing run", exc_info=True)
            finally:
                self.running = False


def _lower_this_thread() -> None:
    """Nice +10 for the calling thread (a Linux thread has its own nice value; threads it starts inherit it)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: the pauses while jobs run remain
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
