"""Finding a query's words inside the text read in pictures: case-blind, and inside longer words and codes.

BM25 (Milvus' analyzer) matches whole words only, so ``B17`` would never find ``GATEB17`` and ``RE16`` never
``RE16TGK``. The search therefore also looks for each query word as a substring of the text read, and ranks the
pictures by how much of the query's words they hold. Pure functions: the store runs the query
(``Rows.search_image_text``), the search fuses the ranking (``imgsearch/search/service.py``)."""

from __future__ import annotations

import re

MAX_TOKENS = 8
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def inside_tokens(query: str) -> list[str]:
    """The query's words worth finding inside others, lower case, longest first: at least 3 characters, or 2 with
    a digit or a letter outside ASCII (a CJK word is often 2 characters). Shorter ones would match nearly any
    text."""
    found = []
    for word in dict.fromkeys(_WORD.findall(query.lower())):
        if len(word) >= 3 or (len(word) == 2 and (any(c.isdigit() for c in word) or not word.isascii())):
            found.append(word)
    return sorted(found, key=len, reverse=True)[:MAX_TOKENS]


def inside_score(tokens: list[str], text: str) -> float:
    """The share of the tokens' characters that ``text`` holds (0 to 1), case-blind."""
    if not tokens:
        return 0.0
    lowered = text.lower()
    return sum(len(token) for token in tokens if token in lowered) / sum(len(token) for token in tokens)
