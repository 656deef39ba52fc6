"""Finding a query's words inside the text read in pictures: case-blind, and inside longer words and codes.

BM25 (Milvus' analyzer) matches whole words only, so ``B17`` would never find ``GATEB17`` and ``RE16`` never
``RE16TGK``. The search therefore also looks for each query word as a substring of the text read, and ranks the
pictures by how much of the query's words they hold. Pure functions: the store runs the query
(``Rows.search_image_text``), the search fuses the ranking (``imgsearch/search/service.py``)."""

from __future__ import annotations

import re

MAX_TOKENS = 8
MIN_SHARE = 0.5  # a picture must hold at least this share of the query's words (by characters) to be listed
# Words so common in any text that holding them says nothing: they neither find a picture inside its text nor,
# alone, by BM25 (a query's other words still do).
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "with",
    ]
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def inside_tokens(query: str) -> list[str]:
    """The query's words worth finding inside others, lower case, longest first: at least 3 characters, or 2 with
    a digit or a letter outside ASCII (a CJK word is often 2 characters). Shorter ones would match nearly any
    text."""
    found = []
    for word in dict.fromkeys(_WORD.findall(query.lower())):
        if word in STOP_WORDS:
            continue
        if len(word) >= 3 or (len(word) == 2 and (any(c.isdigit() for c in word) or not word.isascii())):
            found.append(word)
    return sorted(found, key=len, reverse=True)[:MAX_TOKENS]


def inside_score(tokens: list[str], text: str) -> float:
    """The share of the tokens' characters that ``text`` holds, case-blind; 0 below MIN_SHARE."""
    if not tokens:
        return 0.0
    lowered = text.lower()
    share = sum(len(token) for token in tokens if token in lowered) / sum(len(token) for token in tokens)
    return share if share >= MIN_SHARE else 0.0


def holds_a_word(text: str, query: str) -> bool:
    """Whether ``text`` (a row's searchable text, lower case) holds one of the query's words that is not a stop
    word, as a whole word; a query of stop words only counts any word. What a BM25 hit must show to count: one
    found by "the" alone says nothing about the picture."""
    words = [word for word in _WORD.findall(query.lower())]
    wanted = [word for word in words if word not in STOP_WORDS] or words
    lowered = text.lower()
    found = set(_WORD.findall(lowered))
    # CJK text has no spaces: BM25 matches it by characters, so a run counts where it occurs at all
    return any(word in found or (not word.isascii() and word in lowered) for word in wanted)
