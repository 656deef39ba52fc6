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
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch import BLAS_THREADS_SLEEP
from imgsearch.store.collection import Hit, id_sample_bound
from imgsearch.store.fields import FILTERABLE, DataType
from imgsearch.store.filters import ImageFilter
from imgsearch.store.gateway import MilvusStore

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


def _scores(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``vectors @ queries`` for a (dim, k) matrix of queries: numpy's OpenBLAS on all cores when its threads
    sleep after the call, else torch.

    At 100,000 rows numpy takes ~9 ms on two cores for one query, torch's single-threaded ``mv`` ~19 ms. But
    OpenBLAS threads that spin after the call (numpy imported before imgsearch, see its ``__init__``)
    slowed the next text encode up to 3x (bench/query_latency.py), so then torch, whose pool does not spin.
    """
    if BLAS_THREADS_SLEEP:
        return vectors @ queries
    import torch

    with torch.inference_mode():
        return torch.mm(torch.from_numpy(vectors), torch.from_numpy(queries)).numpy()


@dataclass(eq=False)
class _Waiting:
    vectors: np.ndarray
    query: np.ndarray
    scores: np.ndarray | None = None
    error: BaseException | None = None


class SharedScan:
    """Scores queries against the copy one pass at a time; the queries that arrive during a pass share the next.

    A pass is bound by reading the vectors from memory (200 MB at 100,000 rows), so one pass for eight queries
    took 24 ms where eight single ones took 70 (numpy, two cores). And passes in turn do not fight each other
    for the cores.
    """

    def __init__(self):
        self._waiting: list[_Waiting] = []
        self._waiting_lock = threading.Lock()
        self._pass_lock = threading.Lock()

    def scores(self, vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
        mine = _Waiting(vectors, query)
        with self._waiting_lock:
            self._waiting.append(mine)
        with self._pass_lock:  # while a pass runs, more queries gather for the next
            if mine.scores is None and mine.error is None:  # not answered by the pass before: run one
                self._run_pass(vectors)
        if mine.error is not None:
            raise mine.error
        return mine.scores

    def _run_pass(self, vectors: np.ndarray) -> None:
        with self._waiting_lock:  # the queries against these vectors (a snapshot may have been replaced since)
            batch = [w for w in self._waiting if w.vectors is vectors]
            self._waiting = [w for w in self._waiting if w.vectors is not vectors]
        try:
            scores = _scores(vectors, np.stack([w.query for w in batch], axis=1))
        except BaseException as exc:  # every query of the pass gets the error, not a silent None
            for waiting in batch:
                waiting.error = exc
            raise
        for i, waiting in enumerate(batch):
            waiting.scores = scores[:, i]


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vector-copy", daemon=True)

    # The copy answers search, count, column and sample_vectors; the rest is the gateway's own, named here so that a reader sees
    # the whole interface a searcher may use.
    get = _forwarded("get")
    iter_rows = _forwarded("iter_rows")
    search_text = _forwarded("search_text")
    search_image_text = _forwarded("search_image_text")
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
        scores = self._scan.scores(vectors, np.asarray(query, dtype=np.float32))
        wanted = min(offset + limit, len(scores))
        if wanted <= 0:
            return []
        top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))][offset:]
        rows = top if candidates is None else candidates[top]
        return [
            Hit(
                id=str(snapshot.ids[i]),
                score=float(scores[j]),
                row=snapshot.extra[i],
                vector=snapshot.vectors[i] if with_vectors else None,
            )
            for i, j in zip(rows, top)
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
