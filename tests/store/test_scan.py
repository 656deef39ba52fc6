"""The copy's scan in bf16: the top it returns is the exact fp32 top, proven by the error bound or scanned again."""

from __future__ import annotations

import numpy as np
import pytest

from imgsearch.store import scan as scan_module
from imgsearch.store.scan import SharedScan, exact_top, to_bf16

DIM = 64


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def exact_ids(vectors: np.ndarray, query: np.ndarray, wanted: int) -> list[int]:
    scores = vectors @ query
    return sorted(range(len(vectors)), key=lambda i: (-scores[i], i))[:wanted]


def bf16_top(vectors: np.ndarray, query: np.ndarray, wanted: int) -> list[int]:
    scanned = SharedScan().scores(vectors, query, to_bf16(vectors))
    top, scores = exact_top(vectors, scanned, query, wanted)
    return [int(i) for i in top[np.lexsort((top, -scores))]]


@pytest.mark.parametrize("wanted", [1, 10, 20, 100])
def test_the_bf16_scan_returns_the_exact_top_of_spread_out_rows_without_an_fp32_scan(wanted, monkeypatch):
    rng = np.random.default_rng(wanted)
    vectors = unit(rng.standard_normal((5000, DIM)))
    rescans = []
    real = scan_module._scores
    monkeypatch.setattr(scan_module, "_scores", lambda v, q: rescans.append(q.shape) or real(v, q))
    for query in unit(rng.standard_normal((5, DIM))):
        assert bf16_top(vectors, query, wanted) == exact_ids(vectors, query, wanted)
    assert not rescans, "spread-out rows should be ranked from the bf16 pass and the pool alone"


def test_rows_tied_at_the_last_place_are_all_candidates_so_pages_agree():
    """Ten copies of one picture straddle the 10th place: each page takes them in row order, none twice."""
    rng = np.random.default_rng(2)
    vectors = unit(rng.standard_normal((2000, DIM)))
    query = unit(rng.standard_normal((1, DIM)))[0]
    order = np.argsort(-(vectors @ query))
    vectors[order[5:15]] = vectors[order[5]]  # places 6 to 15 hold the same vector
    for low in (None, to_bf16(vectors)):
        scanned = SharedScan().scores(vectors, query, low)
        pages = []
        for wanted in (10, 20):
            top, scores = exact_top(vectors, scanned, query, wanted)
            pages.append([int(i) for i in top[np.lexsort((top, -scores))][wanted - 10 : wanted]])
        assert len(set(pages[0]) | set(pages[1])) == 20
        assert pages[0] + pages[1] == exact_ids(vectors, query, 20)


def test_rows_closer_than_bf16_can_tell_apart_are_ranked_by_an_fp32_scan(monkeypatch):
    """Near-duplicates whose scores differ by less than bf16's error: the bound cannot prove the pool holds the
    top, so the query is scanned again in fp32 and ranked exactly."""
    rng = np.random.default_rng(7)
    base = unit(rng.standard_normal((1, DIM)))[0]
    vectors = unit(base + 1e-4 * rng.standard_normal((3000, DIM)))  # 3,000 near-copies of one picture
    query = base
    rescans = []
    real = scan_module._scores
    monkeypatch.setattr(scan_module, "_scores", lambda v, q: rescans.append(q.shape) or real(v, q))
    assert bf16_top(vectors, query, 10) == exact_ids(vectors, query, 10)
    assert rescans, "the bf16 ranking of near-ties was taken without the fp32 scan"


@pytest.mark.parametrize("dim", [64, 512, 768])
def test_the_bound_covers_the_largest_error_bf16_makes(dim):
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((20000, dim)))
    query = unit(rng.standard_normal((1, dim)))[0]
    scanned = SharedScan().scores(vectors, query, to_bf16(vectors))
    worst = float(np.abs(scanned.scores - vectors @ query).max())
    assert 0 < worst <= scanned.error
