"""The gateway with an in-memory copy of an embedded collection's vectors in front, for exact and fast search.

Milvus Lite is pure Python: each search walks every stored row in Python to
resolve upserts and deletes, about 100-130 ms at 100,000 rows on two cores
(see README, "Search latency"). On the embedded default the API therefore keeps
a numpy copy of the vectors and answers from it with an exact dot-product
search. Milvus stays the system of record:

- every imgsearch writer bumps a generation token in the data directory after
  each write (``MilvusStore.generation()``);
- a search uses the copy only when its token equals the current one, and
  otherwise goes to Milvus, so a search never misses a row that was written;
- a background thread catches up: it reads every row's metadata (no vectors),
  fetches the vectors of the rows that are new or whose metadata differs from
  the copy's (``indexed_at`` is set on every write), and drops the rest. No
  clock is compared, so a row written with any timestamp is picked up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from imgsearch.store.collection import Hit, id_sample_bound
from imgsearch.store.fields import FILTERABLE, DataType
from imgsearch.store.filters import ImageFilter
from imgsearch.store.gateway import MilvusStore
from imgsearch.store.scan import Bf16Copy, SharedScan, best_rows, bf16_scan_pays, exact_top, pool_size, to_bf16
from imgsearch.store.words import WordIndex

log = logging.getLogger(__name__)

_FETCH_BATCH = 1000  # vectors fetched per request while catching up


@dataclass(frozen=True)
class _Snapshot:
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit length
    # The filterable columns (imgsearch/store/fields.py): numbers as int64 arrays, strings (and arrays
    # of them) as lists, so
    # that one long path does not widen every row as a fixed-width numpy string array would.
    columns: dict[str, np.ndarray | list]
    extra: tuple[dict, ...]  # per row: the remaining metadata fields, for responses
    low: Bf16Copy | None = None  # the vectors in bf16, which the scan reads where the CPU multiplies bf16 (scan.py)

    @property
    def size(self) -> int:
        return len(self.ids)

    def take(self, keep: list[int]) -> _Snapshot:
        rows = np.asarray(keep, dtype=np.int64)
        return _Snapshot(
            [self.ids[i] for i in keep],
            self.vectors[rows],
            {
                name: [values[i] for i in keep] if isinstance(values, list) else values[rows]
                for name, values in self.columns.items()
            },
            tuple(self.extra[i] for i in keep),
        )

    def __add__(self, other: _Snapshot) -> _Snapshot:
        return _Snapshot(
            self.ids + other.ids,
            np.concatenate([self.vectors, other.vectors]),
            {
                name: values + other.columns[name]
                if isinstance(values, list)
                else np.concatenate([values, other.columns[name]])
                for name, values in self.columns.items()
            },
            self.extra + other.extra,
        )


def _snapshot_from_rows(rows: list[dict], dim: int) -> _Snapshot:
    columns: dict[str, np.ndarray | list] = {}
    for column in FILTERABLE:
        values = [r[column.name] for r in rows]
        is_number = column.dtype not in (DataType.VARCHAR, DataType.ARRAY)
        columns[column.name] = np.array(values, dtype=np.int64) if is_number else values
    return _Snapshot(
        ids=[r["id"] for r in rows],
        vectors=np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), dim),
        columns=columns,
        extra=tuple({k: v for k, v in r.items() if k != "vector"} for r in rows),
    )


def _forwarded(name: str) -> Callable[..., Any]:
    """A method of ``VectorCopy`` that calls the gateway's method of that name."""

    def call(self: VectorCopy, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._store, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"The gateway's own ``MilvusStore.{name}``."
    return call


class VectorCopy:
    """Searches like the gateway (``search()``), from the copy while it is fresh and from Milvus otherwise.

    Only an embedded collection has the generation token the copy needs to know it is fresh.
    """

    def __init__(
        self,
        store: MilvusStore,
        dim: int,
        poll_s: float = 0.5,
        reconcile_s: float = 30.0,  # pragma: no mutate
        full_reconcile_s: float = 900.0,
    ):  # pragma: no mutate (the defaults set how soon, not whether)
        if store.generation_token is None:
            raise ValueError(
                "the vector copy needs an embedded (Milvus Lite) collection: a server keeps no generation token"
            )
        self._store = store
        self._dim = dim
        self._poll_s = poll_s
        self._reconcile_s = reconcile_s
        self._full_reconcile_s = full_reconcile_s
        self._reconciled_at = self._fully_reconciled_at = time.monotonic()
        self._snapshot: _Snapshot | None = None
        self._token: str | None = None  # generation the snapshot reflects
        self._scan = SharedScan()
        self._words: tuple[_Snapshot, WordIndex] | None = None  # the words of the snapshot they were read from
        self._words_lock = threading.Lock()
        self._bf16 = bf16_scan_pays()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vector-copy", daemon=True)

    # The copy answers search, count, column and sample_vectors; the rest is the gateway's own, named here so that a reader sees
    # the whole interface a searcher may use.
    get = _forwarded("get")
    iter_rows = _forwarded("iter_rows")
    generation = _forwarded("generation")
    creation_token = _forwarded("creation_token")
    cutoff_params = _forwarded("cutoff_params")
    indexed_roots = _forwarded("indexed_roots")
    check_model = _forwarded("check_model")

    @property
    def collection(self) -> str:
        return self._store.collection

    @property
    def is_embedded(self) -> bool:
        return self._store.is_embedded

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def fresh(self) -> bool:
        return self._snapshot is not None and self._token == self._store.generation()

    def count(self) -> int:
        """Rows in the collection: from the copy if it is fresh, else from Milvus."""
        snapshot = self._snapshot
        return snapshot.size if snapshot is not None and self.fresh else self._store.count()

    def column(self, name: str) -> np.ndarray | list | None:
        """Every row's value of the filterable column ``name``, from the copy; None while it is behind Milvus."""
        snapshot = self._snapshot
        return snapshot.columns[name] if snapshot is not None and self.fresh else None

    def search(
        self,
        vectors: np.ndarray,
        limit: int,
        offset: int = 0,
        image_filter: ImageFilter = ImageFilter(),
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """The gateway's search: nearest rows by cosine similarity, best first, one list per query vector."""
        answers = [self.search_copy(query, limit, offset, image_filter, with_vectors) for query in np.asarray(vectors)]
        if any(hits is None for hits in answers):
            return self._store.search(vectors, limit, offset, image_filter, with_vectors)
        return answers

    def search_text(
        self, text: str, limit: int, image_filter: ImageFilter = ImageFilter(), with_vectors: bool = False
    ) -> list[Hit]:
        """The gateway's BM25 search over names, descriptions, tags and the words read, from the copy while it is
        fresh (imgsearch/store/words.py)."""
        return self._word_search("bm25", text, limit, image_filter, with_vectors)

    def search_image_text(
        self, text: str, limit: int, image_filter: ImageFilter = ImageFilter(), with_vectors: bool = False
    ) -> list[Hit]:
        """The gateway's search for the query's words inside the text read in pictures, from the copy while it is
        fresh."""
        return self._word_search("inside", text, limit, image_filter, with_vectors)

    def _word_search(self, how: str, text: str, limit: int, image_filter: ImageFilter, with_vectors: bool) -> list[Hit]:
        snapshot = self._snapshot
        if snapshot is None or not self.fresh:
            method = self._store.search_text if how == "bm25" else self._store.search_image_text
            return method(text, limit, image_filter, with_vectors)
        words = self._words_of(snapshot)
        mask = image_filter.mask(snapshot.columns, snapshot.size)
        rows, scores = (words.bm25 if how == "bm25" else words.inside)(text, mask)
        # Only the best (and rows tied with the last of them) are sorted: a word every file name holds matches
        # every row, and sorting them all in Python on each query would cost more than the search.
        kept = best_rows(scores, limit)
        rows, scores = rows[kept], scores[kept]
        ids = [snapshot.ids[i] for i in rows]
        best = sorted(range(len(rows)), key=lambda j: (-scores[j], ids[j]))[:limit]
        return [
            Hit(
                id=str(ids[j]),
                score=float(scores[j]),
                row=snapshot.extra[rows[j]],
                vector=snapshot.vectors[rows[j]] if with_vectors else None,
            )
            for j in best
        ]

    def _words_of(self, snapshot: _Snapshot) -> WordIndex:
        """The snapshot's word index, made by the first word search that needs it (about 1 s at 100,000 rows)."""
        with self._words_lock:
            if self._words is None or self._words[0] is not snapshot:
                self._words = (snapshot, WordIndex.of(snapshot.extra))
            return self._words[1]

    def sample_vectors(self, size: int = 2000) -> np.ndarray:
        """The gateway's fixed sample (the rows whose id lies below a bound), from the copy while it is fresh."""
        snapshot = self._snapshot
        if snapshot is None or not self.fresh:
            return self._store.sample_vectors(size)
        bound = id_sample_bound(size, snapshot.size)
        rows = [i for i, row_id in enumerate(snapshot.ids) if not bound or row_id < bound][: 2 * size]
        return snapshot.vectors[np.asarray(rows, dtype=np.int64)]

    def wait_until_fresh(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.fresh:
                return True
            time.sleep(0.05)
        return self.fresh

    def search_copy(
        self,
        query: np.ndarray,
        limit: int,
        offset: int,
        image_filter: ImageFilter = ImageFilter(),
        with_vectors: bool = False,
    ) -> list[Hit] | None:
        """Exact top ``offset..offset+limit`` by cosine similarity, or None when the copy is behind Milvus."""
        snapshot = self._snapshot
        if snapshot is None or not self.fresh:
            return None
        candidates = None
        mask = image_filter.mask(snapshot.columns, snapshot.size)
        if mask is not None and not mask.all():
            candidates = np.flatnonzero(mask)
        vectors = snapshot.vectors if candidates is None else snapshot.vectors[candidates]
        wanted = min(offset + limit, len(vectors))
        if wanted <= 0:
            return []
        low = snapshot.low
        if low is not None and pool_size(wanted) >= len(vectors):
            low = None  # the fp32 rows would all be scored again anyway
        elif low is not None and candidates is not None:
            low = low.rows(candidates)
        query = np.asarray(query, dtype=np.float32)
        top, scores = exact_top(vectors, self._scan.scores(vectors, query, low), query, wanted)
        order = np.lexsort((top, -scores))[offset:wanted]
        rows = top[order] if candidates is None else candidates[top[order]]
        return [
            Hit(
                id=str(snapshot.ids[i]),
                score=float(score),
                row=snapshot.extra[i],
                vector=snapshot.vectors[i] if with_vectors else None,
            )
            for i, score in zip(rows, scores[order])
        ]

    # Background synchronisation

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.fresh:
                    self.sync_now()
                elif time.monotonic() - self._reconciled_at > self._reconcile_s:
                    self.reconcile(full=time.monotonic() - self._fully_reconciled_at > self._full_reconcile_s)
            except Exception:  # Milvus briefly unreachable: searches fall back to Milvus meanwhile
                log.warning("vector copy could not sync; searches go to Milvus until it can", exc_info=True)
                self._stop.wait(5)
            self._stop.wait(self._poll_s)

    def reconcile(self, full: bool = True) -> None:
        """Catch up if Milvus holds other rows, or other versions of them, than the copy.

        Covers writes whose token bump never happened: a writer killed between its write and its bump, a
        script writing with plain pymilvus. The row count is compared every time (the background thread: every
        30 s); every row's (id, indexed_at) only when ``full`` (the background thread: every 15 minutes, since
        Milvus Lite takes about 50 s of CPU to list 100,000 rows), which also catches writes that keep the row
        count. A row rewritten in the same second with the same ``indexed_at`` is not seen.
        """
        self._reconciled_at = time.monotonic()
        snapshot = self._snapshot
        if snapshot is None:
            return
        if not full:
            if self._store.count() != snapshot.size:
                log.warning("vector copy disagreed with Milvus on the row count; catching up")
                self._token = None
                self.sync_now()
            return
        self._fully_reconciled_at = self._reconciled_at
        in_milvus = {row["id"]: row["indexed_at"] for row in self._store.iter_rows(fields=["id", "indexed_at"])}
        in_copy = {row_id: extra["indexed_at"] for row_id, extra in zip(snapshot.ids, snapshot.extra)}
        if in_milvus != in_copy:
            log.warning("vector copy disagreed with Milvus on which rows it holds; catching up")
            self._token = None
            self.sync_now()

    def sync_now(self) -> None:
        """Bring the copy up to date with Milvus (the background thread calls this when behind)."""
        token = self._store.generation()  # read before the data: a write after this makes us stale again
        if self._snapshot is None:
            snapshot = _snapshot_from_rows(list(self._store.iter_rows(with_vectors=True)), self._dim)
        else:
            snapshot = self._catch_up(self._snapshot)
        if self._bf16:
            snapshot = replace(snapshot, low=to_bf16(snapshot.vectors))
        self._snapshot, self._token = snapshot, token
        log.info("vector copy holds %d rows", snapshot.size)

    def _catch_up(self, old: _Snapshot) -> _Snapshot:
        current = {row["id"]: row for row in self._store.iter_rows()}  # metadata only: cheap next to vectors
        keep = [i for i, row_id in enumerate(old.ids) if current.get(row_id) == old.extra[i]]
        kept = {old.ids[i] for i in keep}
        wanted = [row_id for row_id in current if row_id not in kept]
        changed: list[dict] = []
        for start in range(0, len(wanted), _FETCH_BATCH):
            changed.extend(self._store.get(wanted[start : start + _FETCH_BATCH], with_vectors=True).values())
        return old.take(keep) + _snapshot_from_rows(changed, self._dim)
