"""Near-duplicate groups across a whole collection (``imgsearch duplicates``, ``GET /duplicates``).

No pass over all pairs: every image asks the vector index for its nearest few (``neighbours``), batch by batch,
and the pairs whose cosine, with the collection's mean vector taken off (``relevance.centre``), is at or above
the threshold are joined into groups (union-find, so a chain of near copies is one
group). Each member says why it matches the group's first image: the cosine, and what differs between the
files (identical bytes, format, size, orientation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from imgsearch.search.relevance import centre
from imgsearch.store import MilvusStore

QUERY_BATCH = 64  # vectors per search request


@dataclass
class Member:
    id: str
    path: str
    similarity: float  # cosine to the group's first image
    why: str


@dataclass
class DuplicateGroup:
    images: list[Member] = field(default_factory=list)


@dataclass
class DuplicatesReport:
    threshold: float
    images: int = 0
    groups: list[DuplicateGroup] = field(default_factory=list)


def find_duplicates(
    store: MilvusStore,
    threshold: float = 0.95,
    neighbours: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> DuplicatesReport:
    """Groups of images whose vectors are within cosine ``threshold`` of each other, largest first."""
    report = DuplicatesReport(threshold)
    total = store.count()
    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        while parent.get(item, item) != item:
            parent[item] = parent.get(parent[item], parent[item])
            item = parent[item]
        return item

    sample = store.sample_vectors()
    mean = sample.mean(axis=0) if len(sample) else 0.0
    for batch in _batched(store.iter_rows(with_vectors=True), QUERY_BATCH):
        queries = np.asarray([row["vector"] for row in batch], dtype=np.float32)
        centred = centre(queries, mean)
        for row, query, hits in zip(batch, centred, store.search(queries, neighbours, with_vectors=True)):
            report.images += 1
            if not hits:
                continue
            similar = centre(np.stack([hit.vector for hit in hits]), mean) @ query
            for hit, score in zip(hits, similar):
                if hit.id != row["id"] and score >= threshold:
                    for item, found in ((row["id"], row), (hit.id, hit.row)):
                        rows.setdefault(item, found)
                    vectors.setdefault(row["id"], query)
                    a, b = root(row["id"]), root(hit.id)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        if on_progress:
            on_progress(report.images, total)
    members: dict[str, list[str]] = {}
    for item in rows:
        members.setdefault(root(item), []).append(item)
    for ids in members.values():
        ids.sort(key=lambda i: rows[i]["path"])
        first = rows[ids[0]]
        first_vector = vectors.get(ids[0])
        group = DuplicateGroup()
        for i in ids:
            vector = vectors.get(i)
            similarity = (
                1.0
                if i == ids[0]
                else (float(first_vector @ vector) if first_vector is not None and vector is not None else threshold)
            )
            group.images.append(
                Member(i, rows[i]["path"], round(similarity, 4), "" if i == ids[0] else why_alike(first, rows[i]))
            )
        report.groups.append(group)
    report.groups.sort(key=lambda g: (-len(g.images), g.images[0].path))
    return report


def why_alike(first: dict[str, Any], other: dict[str, Any]) -> str:
    """What tells two near-identical images' files apart."""
    if first.get("content_hash") and first.get("content_hash") == other.get("content_hash"):
        return "identical bytes"
    differences = []
    if first.get("format") != other.get("format"):
        differences.append(f"{first.get('format') or '?'} vs {other.get('format') or '?'}")
    size_a, size_b = (first["width"], first["height"]), (other["width"], other["height"])
    if size_a == size_b[::-1] and size_a != size_b:
        differences.append("rotated")
    elif size_a != size_b:
        differences.append(f"{size_a[0]}x{size_a[1]} vs {size_b[0]}x{size_b[1]}")
    if not differences:
        differences.append("re-encoded or edited")
    return "same picture: " + ", ".join(differences)


def _batched(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
