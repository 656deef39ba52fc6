"""The search request the Search page sends, built from what the page shows: plain values in, the body out.

No Streamlit here, so every combination a user can set is checked by a unit test (tests/test_ui.py). The body
holds only the fields that are set, as the API client sends it (``ApiClient`` drops empty fields too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

MAX_RESULTS = 200  # the API's limit per request
NO_WORDS = 0.0  # lexical_weight when "Match words too" is off: the picture alone (on: the API's default)


@dataclass(frozen=True)
class SearchState:
    """What the Search page shows, as plain values; the defaults are those of a freshly opened page.

    ``terms`` are the query builder's terms as the page keeps them, each a dict with ``kind`` ("text", "image"
    or "upload"), ``value`` (the words, the image id or the upload's file name), ``data`` (an upload's bytes)
    and ``weight`` (signed: "not like" makes it negative).
    """

    text: str = ""
    negative: str = ""
    example: tuple[str, bytes] | None = None  # the dropped example image: (file name, bytes)
    more_like_id: str | None = None  # "More like this": the indexed image searched by
    terms: list[dict[str, Any]] = field(default_factory=list)
    top_k: int = 20  # "Results per page"
    pages: int = 1  # pages shown so far ("Load more")
    min_score: float = -1.0  # -1 is the slider's lowest: no minimum
    path_prefix: str = ""
    taken_after: date | None = None
    taken_before: date | None = None
    formats: list[str] = field(default_factory=list)
    camera: str = ""
    newest: bool = False
    tags: list[str] = field(default_factory=list)
    all_tags: bool = False  # "Must have every chosen tag"
    only_matches: bool = True
    fold: bool = True
    names: bool = True  # "Match words too": the text read in pictures, names, descriptions, tags
    has_text: bool = False  # "Only pictures with text"
    variety: float = 0.0


def result_limit(top_k: int, pages: int) -> int:
    """How many results to ask for: every page shown so far, within the API's limit."""
    return min(MAX_RESULTS, top_k * pages)


def search_filter(state: SearchState) -> dict[str, Any] | None:
    """The request's ``filter``: the sidebar's bounds that are set, or None when none is."""
    camera = state.camera.strip()
    bounds = {
        "path_prefix": state.path_prefix or None,
        "taken_after": state.taken_after and state.taken_after.isoformat(),
        "taken_before": state.taken_before and state.taken_before.isoformat(),
        "formats": state.formats or None,
        "cameras": [camera] if camera else None,
        "tags_all" if state.all_tags else "tags_any": state.tags or None,
        "has_text": True if state.has_text else None,
    }
    return {name: value for name, value in bounds.items() if value is not None} or None


def upload_files(state: SearchState) -> list[tuple[str, bytes]]:
    """The images sent with the request, as (file name, bytes): the example image (unless "more like this"
    replaced it), then the query builder's uploads in their order. None at all: the search goes to /search."""
    files = [state.example] if state.example and not state.more_like_id else []
    return files + [(term["value"], term["data"]) for term in state.terms if term["kind"] == "upload"]


def sent_terms(state: SearchState) -> list[dict[str, Any]]:
    """The query builder's terms as the API reads them; an upload is named by its position among the files."""
    sent = []
    uploads = 1 if state.example and not state.more_like_id else 0  # the example image comes first
    for term in state.terms:
        if term["kind"] == "text":
            sent.append({"text": term["value"], "weight": term["weight"]})
        elif term["kind"] == "image":
            sent.append({"image_id": term["value"], "weight": term["weight"]})
        else:
            sent.append({"upload_ref": str(uploads), "weight": term["weight"]})
            uploads += 1
    return sent


def search_body(state: SearchState) -> dict[str, Any]:
    """The JSON body of POST /search, or the ``query`` field of POST /search/image when ``upload_files`` sends
    any (an upload search has no ``image_id``)."""
    query = {
        "image_id": None if upload_files(state) else state.more_like_id,
        "text": state.text.strip() or None,
        "negative_text": state.negative.strip() or None,
        "limit": result_limit(state.top_k, state.pages),
        "min_score": state.min_score if state.min_score > -1.0 else None,
        "filter": search_filter(state),
        "sort": "newest" if state.newest else None,
        "terms": sent_terms(state) or None,
        "cutoff": "auto" if state.only_matches else None,
        "collapse": state.fold or None,
        "diversity": state.variety or None,
        "lexical_weight": None if state.names else NO_WORDS,
        "explain": True,
    }
    return {name: value for name, value in query.items() if value not in (None, "", {})}
