"""A collection's label sets, embedded, and the tags they give image vectors.

The indexer tags new images as it writes them; ``imgsearch tag`` (indexer/tagging.py) tags every stored image
again. Both go through ``Tagger``, so an image gets the same tags either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch.media.searchable_text import with_tags
from imgsearch.model.embedder import Embedder
from imgsearch.tagging.labels import LabelSet, Tags, decide, decode, merge

log = logging.getLogger(__name__)

_PROMPTS_PER_CALL = 64  # the model is shared with searches: they wait at most one call of this many


@dataclass(frozen=True)
class EmbeddedSet:
    label_set: LabelSet
    vectors: np.ndarray  # (labels, dim) float32, unit length: the mean of each label's prompt embeddings


def embed_label_set(encoder: Embedder, label_set: LabelSet) -> EmbeddedSet:
    """Each label's text embedding: its prompts (one per template) embedded and averaged, then normalised."""
    prompts = label_set.prompts()
    flat = [prompt for label_prompts in prompts for prompt in label_prompts]
    vectors = np.concatenate(
        [
            encoder.embed_texts(flat[start : start + _PROMPTS_PER_CALL]).vectors
            for start in range(0, len(flat), _PROMPTS_PER_CALL)
        ]
    )
    starts = np.cumsum([0] + [len(label_prompts) for label_prompts in prompts[:-1]])
    means = np.add.reduceat(vectors.astype(np.float64), starts, axis=0)
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
    return EmbeddedSet(label_set, means.astype(np.float32))


def stored_label_sets(store: Any) -> list[LabelSet]:
    """The label sets stored with ``store``'s collection; one that cannot be read is skipped with a warning."""
    sets = []
    for name, encoded in store.label_sets().items():
        try:
            sets.append(decode(encoded))
        except Exception as exc:  # written by a newer imgsearch, or by hand
            log.warning("label set %r stored with the collection cannot be read (%s); it is skipped", name, exc)
    return sets


class Tagger:
    """Tags for image vectors from label sets. The sets are embedded on first use, not before."""

    def __init__(self, encoder: Embedder, label_sets: Sequence[LabelSet]):
        self._encoder = encoder
        self.label_sets = list(label_sets)
        self._embedded: list[EmbeddedSet] | None = None

    @classmethod
    def for_store(cls, store: Any, encoder: Embedder) -> Tagger | None:
        """A tagger for the collection's label sets; None when it has none."""
        sets = stored_label_sets(store)
        return cls(encoder, sets) if sets else None

    @property
    def embedded(self) -> list[EmbeddedSet]:
        if self._embedded is None:
            self._embedded = [embed_label_set(self._encoder, label_set) for label_set in self.label_sets]
        return self._embedded

    def similarities(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Per set, the (images, labels) cosine similarities."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return [vectors @ embedded.vectors.T for embedded in self.embedded]

    def tags(self, vectors: np.ndarray, similarities: list[np.ndarray] | None = None) -> list[Tags]:
        """Each image's tags over every set."""
        similarities = self.similarities(vectors) if similarities is None else similarities
        per_set = [
            decide(scores, embedded.label_set, self._encoder.logit_scale)
            for scores, embedded in zip(similarities, self.embedded)
        ]
        if not per_set:  # no label sets (the last was removed): no tags
            return [Tags() for _ in range(len(vectors))]
        return [merge(image_tags) for image_tags in zip(*per_set)]

    def fill(self, rows: list[dict[str, Any]]) -> None:
        """Set the ``tags`` and ``tag_scores`` of rows about to be written, from their vectors."""
        if not rows:
            return
        for row, tags in zip(rows, self.tags(np.asarray([row["vector"] for row in rows], dtype=np.float32))):
            row["tags"], row["tag_scores"] = tags.names, tags.scores
            row["text"] = with_tags(row.get("text", ""), tags.names)
