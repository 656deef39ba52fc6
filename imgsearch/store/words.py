"""The vector copy's word searches: BM25 over the searchable text, and the query's words inside the text read in
pictures, answered from memory.

Milvus Lite walks every row in Python for both: at 100,000 rows a BM25 search took 50-200 ms and a
``LIKE '%word%'`` query 1-3 s, so once words were on by default a text search's median went from 19 to 519 ms
(bench/query_latency.py, 2 cores). The copy holds every row's text already; this module indexes it once per
snapshot, when the first word search needs it, and scores like Milvus does:

- BM25 with Milvus' defaults (k1 = 1.2, b = 0.75) over the words of the ``text`` column, lower case, split where
  Milvus' standard analyzer splits them (Unicode word boundaries: ``img_3`` and ``3.14`` stay one word, ``07:45``
  is two, a run of CJK characters is one; checked against Milvus Lite in tests/store/test_words.py);
- inside the text read: ``imgsearch/ocr/matching.py``'s share of the query's words a picture's text holds.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgsearch.ocr.matching import inside_score, inside_tokens

K1, B = 1.2, 0.75
_TOKEN = re.compile(r"\w+(?:['\u2019.]\w+)*", re.UNICODE)


def words_of(text: str) -> list[str]:
    """The words BM25 counts in ``text``, lower case."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class WordIndex:
    """One snapshot's words: for BM25, each word's rows and counts and each row's length; for matching inside
    the text read, the rows that hold any and that text in lower case."""

    postings: dict[str, tuple[np.ndarray, np.ndarray]]
    lengths: np.ndarray
    average: float
    read_rows: np.ndarray
    read_text: tuple[str, ...]

    @classmethod
    def of(cls, rows: Sequence[dict]) -> WordIndex:
        lists: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(len(rows), dtype=np.float32)
        read_rows, read_text = [], []
        for i, row in enumerate(rows):
            counts = Counter(words_of(row.get("text") or ""))
            lengths[i] = sum(counts.values())
            for word, count in counts.items():
                lists[word].append((i, count))
            if image_text := row.get("image_text"):
                read_rows.append(i)
                read_text.append(image_text.lower())
        postings = {
            word: (np.array([i for i, _ in found], dtype=np.int64), np.array([c for _, c in found], dtype=np.float32))
            for word, found in lists.items()
        }
        average = float(lengths.mean()) if len(rows) and lengths.any() else 1.0
        return cls(postings, lengths, average, np.array(read_rows, dtype=np.int64), tuple(read_text))

    def bm25(self, query: str, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows that hold a word of ``query`` and their BM25 scores (unordered); ``keep``: a mask of the rows a
        filter lets through, or None for all."""
        total = len(self.lengths)
        scores = np.zeros(total, dtype=np.float32)
        for word in dict.fromkeys(words_of(query)):
            if word not in self.postings:
                continue
            rows, counts = self.postings[word]
            idf = math.log(1 + (total - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = K1 * (1 - B + B * self.lengths[rows] / self.average)
            scores[rows] += idf * counts * (K1 + 1) / (counts + norm)
        found = np.flatnonzero(scores > 0)
        if keep is not None:
            found = found[keep[found]]
        return found, scores[found]

    def inside(self, query: str, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows whose text read holds the query's words, also inside longer words and codes, and the share held
        (unordered)."""
        tokens = inside_tokens(query)
        if not tokens:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        found, shares = [], []
        for row, text in zip(self.read_rows, self.read_text):
            if (keep is None or keep[row]) and (share := inside_score(tokens, text)) > 0:
                found.append(row)
                shares.append(share)
        return np.array(found, dtype=np.int64), np.array(shares, dtype=np.float32)
