"""Relevance maths without Milvus: the auto cutoff on planted clusters, collapse, MMR, rank fusion, per-term
explanations and the command line's query expressions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from imgsearch.search.query_expression import ExpressionTerm, QueryExpressionError, parse_expression
from imgsearch.search.ranking import blend
from imgsearch.search.relevance import auto_cutoff, centre, collapse, contributions, diversify, fuse


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def around(direction: np.ndarray, cosines: np.ndarray, rng) -> np.ndarray:
    """Unit vectors at the given cosines to ``direction``, in random other directions."""
    noise = unit(rng.normal(size=(len(cosines), direction.size)))
    noise = unit(noise - (noise @ direction)[:, None] * direction)
    return cosines[:, None] * direction + np.sqrt(1 - cosines[:, None] ** 2) * noise


def planted_case(dim: int, background: int, cluster: int, seed: int):
    """A collection of random vectors, ten unrelated clusters of 30, and ``cluster`` vectors around the query at
    cosines from 4.5 background standard deviations up to 0.95. Returns (vectors, relevant mask, query)."""
    rng = np.random.default_rng(seed)
    query = unit(rng.normal(size=dim))
    others = [around(unit(rng.normal(size=dim)), rng.uniform(0.5, 0.95, 30), rng) for _ in range(10)]
    members = around(query, rng.uniform(4.5 / np.sqrt(dim), 0.95, cluster), rng)
    vectors = np.concatenate([members, unit(rng.normal(size=(background, dim))), *others]).astype(np.float32)
    relevant = np.zeros(len(vectors), dtype=bool)
    relevant[:cluster] = True
    return vectors, relevant, query.astype(np.float32)


def returned_by_cutoff(vectors, query, seed):
    """What the service does: the best 1,000 by cosine, judged against a fixed sample of 2,000 rows."""
    sample = np.random.default_rng(seed + 1000).choice(len(vectors), 2000, replace=False)
    mean = vectors[sample].mean(axis=0)
    centred = centre(vectors, mean)
    best = np.argsort(-(vectors @ query))[:1000]
    keep, cutoff = auto_cutoff(centred[best] @ query, centred[sample] @ query, len(vectors))
    return set(best[keep]), cutoff


CASES = list(itertools.product([64, 256, 512], [2000, 20000], [5, 20, 100]))


def test_the_auto_cutoff_finds_planted_clusters_with_precision_and_recall_over_0_9():
    precision, recall, fixed = [], [], {t: [] for t in (0.2, 0.3, 0.4, 0.5)}
    for dim, background, cluster in CASES:
        vectors, relevant, query = planted_case(dim, background, cluster, seed=dim + background + cluster)
        got, cutoff = returned_by_cutoff(vectors, query, seed=dim)
        truth = set(np.flatnonzero(relevant))
        precision.append(len(got & truth) / max(len(got), 1))
        recall.append(len(got & truth) / len(truth))
        assert cutoff.kept == len(got)
        for threshold in fixed:  # the baseline: one fixed cosine for every query and model
            kept = set(np.flatnonzero(vectors @ query >= threshold))
            fixed[threshold].append(min(len(kept & truth) / max(len(kept), 1), len(kept & truth) / len(truth)))
    assert np.mean(precision) >= 0.9 and np.mean(recall) >= 0.9, (np.mean(precision), np.mean(recall))
    # No fixed threshold does as well on the same cases: that is why the cutoff adapts.
    assert max(np.mean(scores) for scores in fixed.values()) < min(np.mean(precision), np.mean(recall))


def test_the_threshold_rises_with_the_collection_and_the_knee_drops_stragglers():
    rng = np.random.default_rng(0)
    background = rng.normal(0, 0.05, 2000)
    _, small = auto_cutoff(np.array([0.9]), background, 1_000)
    _, large = auto_cutoff(np.array([0.9]), background, 1_000_000)
    assert large.z > small.z and large.threshold > small.threshold
    # Three strong matches and one just above the threshold, far below them: the straggler goes.
    threshold = small.threshold
    keep, cutoff = auto_cutoff(np.array([0.8, 0.79, 0.78, threshold + 0.01, threshold - 0.05]), background, 1_000)
    assert keep.tolist() == [True, True, True, False, False] and cutoff.knee
    # Evenly spread strong matches are all kept: no gap is a knee.
    spread = np.linspace(0.8, threshold + 0.01, 12)
    keep, cutoff = auto_cutoff(spread, background, 1_000)
    assert keep.all() and not cutoff.knee


def test_collapse_folds_near_identical_vectors_into_the_first_of_them():
    rng = np.random.default_rng(1)
    a, b = unit(rng.normal(size=32)), unit(rng.normal(size=32))
    near_a = unit(a + 0.05 * unit(rng.normal(size=32)))
    vectors = np.stack([a, b, near_a, unit(b + 0.01 * unit(rng.normal(size=32))), unit(rng.normal(size=32))])
    assert float(near_a @ a) >= 0.95
    assert collapse(vectors, 0.95) == [[0, 2], [1, 3], [4]]
    assert collapse(vectors, 0.99999) == [[0], [1], [2], [3], [4]]


def test_diversity_zero_keeps_the_order_and_more_diversity_skips_look_alikes():
    rng = np.random.default_rng(2)
    a, b = unit(rng.normal(size=16)), unit(rng.normal(size=16))
    vectors = np.stack([a, unit(a + 0.01 * b), unit(a + 0.02 * b), b])
    relevance = np.array([0.9, 0.89, 0.88, 0.5])
    assert diversify(relevance, vectors, 0.0, 4) == [0, 1, 2, 3]
    assert diversify(relevance, vectors, 0.7, 2) == [0, 3]  # the look-alikes of the first wait
    assert diversify(relevance, vectors, 0.7, 0) == []


def test_rank_fusion_weighs_each_list_by_rank():
    assert fuse([["a", "b", "c"], ["c", "d"]], [0.5, 0.5]) == [
        ("c", pytest.approx(0.5 / 63 + 0.5 / 61)),
        ("a", pytest.approx(0.5 / 61)),
        ("b", pytest.approx(0.5 / 62)),
        ("d", pytest.approx(0.5 / 62)),
    ]
    assert [item for item, _ in fuse([["a", "b"], ["b"]], [1.0, 0.0])] == ["a", "b"]


def test_term_contributions_add_up_to_the_blended_score():
    rng = np.random.default_rng(3)
    terms = unit(rng.normal(size=(3, 8))).astype(np.float32)
    weights = [2.0, 1.0, -0.5]
    result = unit(rng.normal(size=8)).astype(np.float32)
    cosines, shares = contributions(terms, weights, result)
    query = blend(list(zip(terms, weights)))
    assert cosines == pytest.approx(list(terms @ result), abs=1e-5)
    assert sum(shares) == pytest.approx(float(query @ result), abs=1e-5)
    assert shares[2] * cosines[2] <= 0  # a negative term's share has the other sign of its cosine


def test_query_expressions_follow_rclip():
    files = {"./pool.jpg"}
    parse = lambda *arguments: parse_expression(list(arguments), is_file=files.__contains__)  # noqa: E731
    assert parse("2:golden retriever", "+", "./pool.jpg", "-", "fruit") == [
        ExpressionTerm("text", "golden retriever", 2.0),
        ExpressionTerm("image", "./pool.jpg", 1.0),
        ExpressionTerm("text", "fruit", -1.0),
    ]
    assert parse("red", "bicycle", "-", "0.5:people") == [
        ExpressionTerm("text", "red bicycle", 1.0),
        ExpressionTerm("text", "people", -0.5),
    ]
    assert parse("-", "people") == [ExpressionTerm("text", "people", -1.0)]
    assert parse('"IMG_2041"') == [ExpressionTerm("text", '"IMG_2041"', 1.0)]
    assert parse() == []
    for bad, message in (
        (("cat", "+"), "ends with"),
        (("cat", "+", "+", "dog"), "between two terms"),
        (("+", "cat"), "between two terms"),
        (("0:cat",), "weight 0"),
    ):
        with pytest.raises(QueryExpressionError, match=message):
            parse(*bad)
