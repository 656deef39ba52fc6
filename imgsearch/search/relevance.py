"""Where relevance ends, which results are the same picture, and how two result lists are fused: pure maths
over arrays, apart from any I/O (the search service and ``imgsearch duplicates`` feed it;
``tests/test_relevance.py`` proves it).

- ``auto_cutoff``: a threshold per query, from the query's own scores against a fixed sample of the collection;
- ``collapse``: near-identical results folded into the first of them;
- ``diversify``: maximal marginal relevance (MMR) over the best candidates;
- ``fuse``: weighted reciprocal rank fusion of the vector and the name (BM25) rankings;
- ``contributions``: what each query term adds to a result's score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

KNEE_OVER_USUAL = 3.0
RRF_K = 60  # reciprocal rank fusion's constant, as Milvus's RRFRanker and the original paper use it


# ── The cutoff ────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class CutoffParams:
    """How strict ``auto_cutoff`` is; a collection stores the values for its model family.

    - ``background_matches``: how many unrelated images of the whole collection a query may let through, on
      average, if their scores were as spread as the sample's (the z threshold grows with the collection);
    - ``min_z``: the z threshold never goes below this, however small the collection;
    - ``knee_gap`` and ``knee_band`` (in background standard deviations): the kept scores are cut at their
      largest gap when that gap is at least ``knee_gap`` wide and everything below it lies within
      ``knee_band`` of the threshold, that is, looks like the background's own stragglers (and the gap is
    three times the kept scores' usual gap: evenly spread matches have no knee).
    """

    background_matches: float = 0.5
    min_z: float = 2.0
    knee_gap: float = 1.0
    knee_band: float = 1.5

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> CutoffParams:
        try:
            given = json.loads(text) if text else {}
            return cls(**{name: float(value) for name, value in given.items() if name in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return cls()


# Per model family. Standardising against the background makes the z scale the same for every model, so the
# families differ only in how their scores spread: SigLIP's sigmoid loss leaves a long right tail of weakly
# related images, which a stricter threshold keeps out.
FAMILY_CUTOFFS = {
    "clip": CutoffParams(),
    "siglip": CutoffParams(background_matches=0.25, min_z=2.5),
}


def model_family(model: str) -> str:
    return "siglip" if "siglip" in model.lower() else "clip"


def family_cutoff(model: str) -> CutoffParams:
    """The cutoff parameters a new collection of ``model`` records."""
    return FAMILY_CUTOFFS[model_family(model)]


@dataclass(frozen=True)
class Cutoff:
    """Where a query's results stop, reported with the response."""

    mode: str  # "auto"
    threshold: float  # in centred score units: keep centred scores >= this
    z: float  # the z threshold used
    background_mean: float
    background_std: float
    knee: bool  # whether the largest gap moved the cut up
    kept: int = 0  # candidates kept
    params: dict = field(default_factory=dict)


def centre(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Vectors with the collection's mean taken off, at unit length.

    A CLIP's image vectors share one large component (in a random-weight model nearly all of them), so raw
    cosines between images bunch together near the top; without it, the spread is what tells images apart."""
    centred = np.asarray(vectors, dtype=np.float32) - mean
    norms = np.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def auto_cutoff(
    candidates: np.ndarray, background: np.ndarray, collection_size: int, params: CutoffParams = CutoffParams()
) -> tuple[np.ndarray, Cutoff]:
    """Which candidates are relevant, from their centred scores and the centred scores of a background sample.

    ``candidates``: the centred scores of the best results, best first (by raw score); ``background``: those
    of a fixed random sample of the collection. Returns a boolean mask over the candidates and the cutoff.
    """
    candidates = np.asarray(candidates, dtype=np.float64)
    background = np.asarray(background, dtype=np.float64)
    mean = float(np.median(background)) if background.size else 0.0
    std = 1.4826 * float(np.median(np.abs(background - mean))) if background.size else 0.0
    if std < 1e-6:  # too few or identical samples: the plain deviation, and a floor
        std = max(float(background.std()) if background.size else 0.0, 1e-3)
    tail = min(0.5, params.background_matches / max(collection_size, 1))
    z = max(params.min_z, NormalDist().inv_cdf(1 - tail))
    threshold = mean + z * std
    keep = candidates >= threshold
    knee = False
    kept = np.sort(candidates[keep])[::-1]
    if kept.size >= 2:
        gaps = kept[:-1] - kept[1:]
        j = int(np.argmax(gaps))
        usual = float(np.median(gaps)) if gaps.size >= 2 else 0.0
        if (
            gaps[j] >= params.knee_gap * std
            and gaps[j] >= KNEE_OVER_USUAL * usual
            and kept[j + 1] <= threshold + params.knee_band * std
        ):
            threshold, knee = float(kept[j]), True
            keep = candidates >= threshold
    cutoff = Cutoff(
        "auto", round(threshold, 6), round(z, 3), round(mean, 6), round(std, 6), knee, int(keep.sum()), asdict(params)
    )
    return keep, cutoff


# ── Near-duplicates and variety ───────────────────────────────────────────────────────────────────────────


def collapse(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups of near-identical results, in result order: each result joins the first earlier group leader
    whose cosine to it is at least ``threshold``, else leads a group. Returns lists of indices, leader first."""
    vectors = np.asarray(vectors, dtype=np.float32)
    groups: list[list[int]] = []
    leaders: list[int] = []
    for i in range(len(vectors)):
        if leaders:
            similarity = vectors[leaders] @ vectors[i]
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                groups[best].append(i)
                continue
        leaders.append(i)
        groups.append([i])
    return groups


def diversify(relevance: np.ndarray, vectors: np.ndarray, diversity: float, count: int) -> list[int]:
    """Maximal marginal relevance: ``count`` indices, each maximising
    ``(1 - diversity) * relevance - diversity * (highest cosine to those already chosen)``.

    ``relevance`` is rescaled to 0..1 over the candidates first, so the trade-off means the same for any score
    scale. ``diversity`` 0 keeps the order; 1 picks the first and then whatever is least like the chosen."""
    relevance = np.asarray(relevance, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(relevance)
    count = min(count, n)
    if n == 0 or count == 0:
        return []
    spread = float(relevance.max() - relevance.min())
    scaled = (relevance - relevance.min()) / spread if spread > 0 else np.ones(n)
    chosen = [int(np.argmax(scaled))]
    closest = (vectors @ vectors[chosen[0]]).astype(np.float64)  # each candidate's highest cosine to the chosen
    available = np.ones(n, dtype=bool)
    available[chosen[0]] = False
    while len(chosen) < count:
        value = (1 - diversity) * scaled - diversity * closest
        value[~available] = -np.inf
        pick = int(np.argmax(value))  # ties go to the better-ranked candidate
        chosen.append(pick)
        available[pick] = False
        closest = np.maximum(closest, vectors @ vectors[pick])
    return chosen


# ── Fusion and explanation ────────────────────────────────────────────────────────────────────────────────


def fuse(rankings: Sequence[Sequence[str]], weights: Sequence[float], k: int = RRF_K) -> list[tuple[str, float]]:
    """Weighted reciprocal rank fusion: each id scores ``sum(weight / (k + rank))`` over the rankings it is in
    (rank from 1). Best first; equal scores keep the order of first appearance, the first ranking first."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(dict.fromkeys(item for ranking in rankings for item in ranking))}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def contributions(
    term_vectors: np.ndarray, weights: Sequence[float], vector: np.ndarray
) -> tuple[list[float], list[float]]:
    """Each term's cosine to ``vector`` and its share of the blended query's cosine.

    The query is ``sum(w_i * t_i) / |sum(w_i * t_i)|`` over unit term vectors ``t_i``, so its cosine to a unit
    vector splits exactly into ``w_i * cos(t_i, v) / |sum(w_i * t_i)|``: the shares add up to the score."""
    terms = np.asarray(term_vectors, dtype=np.float64)
    terms = terms / np.maximum(np.linalg.norm(terms, axis=1, keepdims=True), 1e-12)
    w = np.asarray(weights, dtype=np.float64)
    norm = float(np.linalg.norm(w @ terms))
    v = np.asarray(vector, dtype=np.float64)
    v = v / max(float(np.linalg.norm(v)), 1e-12)
    cosines = terms @ v
    shares = w * cosines / max(norm, 1e-12)
    return [round(float(c), 6) for c in cosines], [round(float(s), 6) for s in shares]
