"""Turn embedded files into Milvus rows and write them in batches."""

from __future__ import annotations

from typing import Any

from imgsearch.indexer.profile import NO_CLOCK
from imgsearch.store import MilvusStore
from imgsearch.tagging.tagger import Tagger


class BatchWriter:
    """Buffers rows and upserts them ``batch_size`` at a time. Upsert keeps re-runs free of duplicates."""

    def __init__(self, store: MilvusStore, batch_size: int = 256, clock=NO_CLOCK, tagger: Tagger | None = None):
        self.store = store
        self.tagger = tagger  # the collection's label sets: rows get their tags as they are written
        self.batch_size = batch_size
        self.clock = clock  # times the writes for `imgsearch index --profile`
        self._rows: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            if self.tagger is not None:
                with self.clock.stage("tag"):
                    self.tagger.fill(self._rows)
            with self.clock.stage("write"):
                self.store.upsert(self._rows)
            self._rows = []
