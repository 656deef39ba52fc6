"""How the vector copy scores a query against every row: one pass over the vectors for all the queries that
wait, and, where the CPU multiplies bf16 natively, a pass over a bf16 copy whose best candidates are scored
again in fp32 and checked to be the exact top.

A pass is bound by reading the vectors from memory: 200 MB at 100,000 rows. In fp32, a pass for two to
eight queries took 16-23 ms where one took 7 (numpy and torch pack the whole matrix for a product with several
columns). In bf16 it took 3.6-3.8 ms on an AMX Xeon (bench/query_latency.py). bf16 keeps 8 bits of each
number, so its scores are off by up to ``bf16_error``; the rows it ranks best are scored again in fp32, and the
answer is used only if its last row beats, by more than that error, every row left out. Otherwise the query is
scanned again in fp32. Results are exact either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch import BLAS_THREADS_SLEEP
from imgsearch.model.cpu import cpu_flags

_BF16_UNIT = 2.0**-8  # bf16's unit roundoff (8 significant bits)
POOL_FACTOR, POOL_EXTRA = 4, 64  # candidates scored again in fp32: 4x the rows wanted, and 64 more


def bf16_scan_pays() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX, AVX512_BF16) and torch is there to do it."""
    if not cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Bf16Copy:
    """The copy's vectors in bf16 (a torch tensor: numpy has no bf16), and the longest of them in fp32."""

    tensor: Any
    longest: float

    def rows(self, rows: np.ndarray) -> Bf16Copy:
        """A filtered search's candidates (the longest row bounds theirs too)."""
        import torch

        return Bf16Copy(self.tensor[torch.from_numpy(rows)], self.longest)


def to_bf16(vectors: np.ndarray) -> Bf16Copy:
    """The bf16 copy the scan reads. A row of NaN makes ``longest`` NaN, and every bf16 answer is then checked
    in vain and scanned again in fp32."""
    import torch

    longest = float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max())) if len(vectors) else 0.0
    return Bf16Copy(torch.from_numpy(vectors).to(torch.bfloat16), longest)


def bf16_error(query: np.ndarray, low: Bf16Copy) -> float:
    """The most a bf16 score can differ from the fp32 one, for rows no longer than ``low.longest``: rounding the
    row and the query (each off by at most 2^-8 of its length: 2u + u^2), rounding the product (u (1 + u)^2), and
    the fp32 sums of the bf16 product and of the fp32 score it is compared with (dim x 2^-24 each)."""
    u, dim = _BF16_UNIT, len(query)
    scale = float(np.linalg.norm(query)) * low.longest
    return scale * (3 * u + 4 * u * u + 2 * dim * 2.0**-24)


def pool_size(wanted: int) -> int:
    """How many rows by bf16 score are scored again in fp32 for the ``wanted`` best."""
    return POOL_FACTOR * wanted + POOL_EXTRA


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


def _bf16_scores(low: Bf16Copy, queries: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.mm(low.tensor, torch.from_numpy(queries).to(torch.bfloat16)).float().numpy()


@dataclass(frozen=True)
class Scanned:
    """One query's pass: its score for every row, and how far off those may be (0: exact)."""

    scores: np.ndarray
    error: float = 0.0


def best_rows(scores: np.ndarray, wanted: int) -> np.ndarray:
    """The positions of the ``wanted`` highest scores, and of every other score equal to the last of them
    (unordered): the caller orders by (score, row) and cuts, so that pages agree on who is 10th among ties."""
    if wanted >= len(scores):
        return np.arange(len(scores))
    top = np.argpartition(-scores, wanted - 1)[:wanted]
    tied = np.flatnonzero(scores >= scores[top].min())
    return tied if len(tied) >= wanted else top  # fewer only where a NaN took a place


def exact_top(vectors: np.ndarray, scanned: Scanned, query: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """At least the ``wanted`` rows of highest exact score (unordered; more where the last place is tied) and
    their scores, from a pass's scores."""
    scores = scanned.scores
    if wanted <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if scanned.error == 0.0:
        top = best_rows(scores, wanted)
        return top, scores[top]
    pool = pool_size(wanted)
    if pool < len(scores):
        parted = np.argpartition(-scores, pool)
        candidates, left_out = parted[:pool], float(scores[parted[pool]])  # the best row not in the pool
        exact = vectors[candidates] @ query
        best = best_rows(exact, wanted)
        if float(exact[best].min()) > left_out + scanned.error:  # no row left out can come in, nor tie
            return candidates[best], exact[best]
    return exact_top(vectors, Scanned(_scores(vectors, query[:, None])[:, 0]), query, wanted)


@dataclass(eq=False)
class _Waiting:
    vectors: np.ndarray
    low: Bf16Copy | None
    query: np.ndarray
    scanned: Scanned | None = None
    error: BaseException | None = None


class SharedScan:
    """Scores queries against the copy one pass at a time; the queries that arrive during a pass share the next.

    Passes in turn do not fight each other for the cores, and one pass for eight queries reads the vectors
    once."""

    def __init__(self):
        self._waiting: list[_Waiting] = []
        self._waiting_lock = threading.Lock()
        self._pass_lock = threading.Lock()

    def scores(self, vectors: np.ndarray, query: np.ndarray, low: Bf16Copy | None = None) -> Scanned:
        """``query``'s score for each row of ``vectors``: exact, or from ``low`` (their bf16 copy) if given."""
        mine = _Waiting(vectors, low, query)
        with self._waiting_lock:
            self._waiting.append(mine)
        with self._pass_lock:  # while a pass runs, more queries gather for the next
            if mine.scanned is None and mine.error is None:  # not answered by the pass before: run one
                self._run_pass(vectors, low)
        if mine.error is not None:
            raise mine.error
        return mine.scanned

    def _run_pass(self, vectors: np.ndarray, low: Bf16Copy | None) -> None:
        with self._waiting_lock:  # the queries against these vectors (a snapshot may have been replaced since)
            batch = [w for w in self._waiting if w.vectors is vectors and w.low is low]
            self._waiting = [w for w in self._waiting if not (w.vectors is vectors and w.low is low)]
        try:
            queries = np.stack([w.query for w in batch], axis=1)
            scores = _scores(vectors, queries) if low is None else _bf16_scores(low, queries)
        except BaseException as exc:  # every query of the pass gets the error, not a silent None
            for waiting in batch:
                waiting.error = exc
            raise
        for i, waiting in enumerate(batch):
            error = 0.0 if low is None else bf16_error(waiting.query, low)
            waiting.scanned = Scanned(np.ascontiguousarray(scores[:, i]), error)
