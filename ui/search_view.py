"""The "Search" view: the sidebar's options and filters, the query (words, an example image, the query builder,
the relevance switches), then the results."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import streamlit as st

from imgsearch.ui import state
from imgsearch.ui.api_client import ApiClient, ApiError, ApiUnreachable
from imgsearch.ui.components import IMAGE_TYPES, escaped, query_builder, render_grid, show_error
from imgsearch.ui.search_request import MAX_RESULTS, SearchState, search_body, search_filter, upload_files

if TYPE_CHECKING:
    from streamlit.runtime.uploaded_file_manager import UploadedFile

FORMATS = ["JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "TIFF", "BMP", "MPO"]  # as Pillow names them
EARLIEST, LATEST = date(1826, 1, 1), date(2200, 12, 31)


def indexing_progress(client: ApiClient) -> bool:
    """A line with the progress of the server's indexing jobs, if any runs or waits; whether one does."""
    try:
        jobs = [job for job in client.unfinished_jobs() if job["kind"] in ("index", "watch")]
    except (ApiError, ApiUnreachable):  # an older server, or a key that may not list jobs: no progress to show
        return False
    if not jobs:
        return False
    running = next((job for job in jobs if job["state"] == "running"), None)
    if running and running["total"]:
        what = "new photos" if running["kind"] == "watch" else "photos"  # a watcher's run: what came in
        st.info(f"Indexing {running['total']:,} {what}: {running['processed']:,} done. Reload to see them.", icon="⏳")
    else:
        st.info("Indexing: looking for photos in " + ", ".join(escaped(p) for p in jobs[0]["paths"]), icon="⏳")
    return True


def render(client: ApiClient, health: dict[str, Any], base_url: str) -> None:
    """The whole view; ``health`` is the API's answer to GET /health, ``base_url`` where the API was reached."""
    with st.sidebar:
        options = sidebar(client, health, base_url)
    indexing = indexing_progress(client)
    if health["count"] == 0:
        if not indexing:
            st.info(
                "The index is empty. Add images from a terminal with `imgsearch index ~/Pictures` "
                "(or any folder), then reload this page.",
                icon="📂",
            )
        st.stop()
    query, upload = query_inputs()
    more_like = more_like_banner()
    if not (query["text"].strip() or upload or more_like or st.session_state.terms):
        st.caption("Type a few words, drop an image, or pick “More like this” on a result.")
        return
    page_state = SearchState(
        **options,
        **query,
        example=(upload.name, upload.getvalue()) if upload else None,
        more_like_id=more_like and more_like["id"],
        terms=state.weighted_terms(),
    )
    restart_on_change(page_state, upload.file_id if upload else None)
    page_state = replace(page_state, pages=st.session_state.pages)
    try:
        response = search(client, page_state)
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return
    show_results(client, response, search_body(page_state)["limit"])


# The sidebar -----------------------------------------------------------------------------------------------------


def sidebar(client: ApiClient, health: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The index, the options and the filters; what they are set to, as ``SearchState`` fields."""
    st.subheader("Index")
    st.metric("Images", f"{health['count']:,}")
    st.caption(f"Model: `{PurePath(health['model']).name}` ({health['dim']}-d)  \nAPI: {base_url}")
    st.subheader("Options")
    top_k = st.slider("Results per page", 5, 100, 20, step=5)
    min_score = st.slider(
        "Minimum score", -1.0, 1.0, -1.0, step=0.05, help="hide results less similar than this (cosine similarity)"
    )
    path_prefix = st.text_input("Only paths starting with", placeholder="/photos/2024/")
    return {"top_k": top_k, "min_score": min_score, "path_prefix": path_prefix, **photo_filters(), **tag_filter(client)}


def photo_filters() -> dict[str, Any]:
    """When a photo was taken, its format and camera; and "Newest first"."""
    st.subheader("Photos")
    taken_after = st.date_input("Taken on or after", value=None, min_value=EARLIEST, max_value=LATEST)
    taken_before = st.date_input("Taken before", value=None, min_value=EARLIEST, max_value=LATEST)
    formats = st.multiselect("Formats", FORMATS, placeholder="any")
    camera = st.text_input("Camera model", placeholder="X100V", help="as the photo's EXIF names it, exactly")
    newest = st.toggle("Newest first", help="the best matches, ordered by when they were taken")
    has_text = st.toggle(
        "Only pictures with text", help="screenshots, documents, signs: pictures where text was read", key="has_text"
    )
    return {
        "has_text": has_text,
        "taken_after": taken_after,
        "taken_before": taken_before,
        "formats": formats,
        "camera": camera,
        "newest": newest,
    }


def tag_filter(client: ApiClient) -> dict[str, Any]:
    """The tags a result must have (any of them, or all), each offered with its count of images."""
    st.subheader("Tags")
    counts = tag_counts(client)
    tags = st.multiselect(
        "Tags",
        list(counts),
        format_func=lambda tag: f"{tag} ({counts[tag]:,})",
        placeholder="any",
        key="tag_filter",
        help="only images tagged with these (zero-shot tags from the label sets)",
    )
    all_tags = st.toggle("Must have every chosen tag", key="all_tags")
    if not counts:
        st.caption("No tags yet: add a label set under “Label sets” above.")
    return {"tags": tags, "all_tags": all_tags}


def tag_counts(client: ApiClient) -> dict[str, int]:
    try:
        return client.tags()["tags"]
    except (ApiError, ApiUnreachable):
        return {}


# The query -------------------------------------------------------------------------------------------------------


def query_inputs() -> tuple[dict[str, Any], UploadedFile | None]:
    """The words, "…but not", the example image, the query builder and the relevance switches: their values as
    ``SearchState`` fields, and the example image dropped (or None)."""
    text = st.text_input(
        "Describe what you are looking for, then press Enter",
        key="query_text",
        placeholder="a red bicycle leaning on a wall",
    )
    left, right = st.columns([2, 1])
    with left:
        negative = st.text_input("…but not", placeholder="people")
    with right:
        upload = st.file_uploader("…or drop an example image", type=IMAGE_TYPES)
    query_builder()
    return {"text": text, "negative": negative, **relevance_switches()}, upload


def relevance_switches() -> dict[str, Any]:
    """ "Only matches", "Fold near-duplicates", "Match words too" and "Variety" (their state: state.SWITCHES)."""
    matches, duplicates, by_name, variety_column = st.columns([1, 1, 1, 1], vertical_alignment="center")
    only_matches = matches.toggle(
        "Only matches",
        key="only_matches",
        help="stop where this query's matches end, judged from its scores against the "
        "whole collection; off: every image, best first",
    )
    fold = duplicates.toggle(
        "Fold near-duplicates", key="fold", help="copies, re-encodes and bursts show as one result with “+N similar”"
    )
    names = by_name.toggle(
        "Match words too",
        key="names",
        help="the words typed count where an image holds them: text read in the picture (also inside longer "
        "words and codes), file and folder names, descriptions and tags; off: the picture alone",
    )
    variety = variety_column.slider(
        "Variety", 0.0, 1.0, step=0.1, key="variety", help="towards 1: fewer look-alikes among the top results"
    )
    return {"only_matches": only_matches, "fold": fold, "names": names, "variety": variety}


def more_like_banner() -> dict[str, str] | None:
    """The image "More like this" searches by, said above the results with a way back; None when there is none."""
    more_like = st.session_state.more_like
    if more_like:
        st.info(f"Showing images like **{escaped(more_like['name'])}**")
        st.button("✕ Back to text search", on_click=state.clear_more_like_this)
    return more_like


def restart_on_change(page_state: SearchState, upload_id: str | None) -> None:
    """Back to the first page of results whenever the query changes ("Load more" only adds pages to one query)."""
    signature = (
        page_state.text,
        page_state.negative,
        upload_id,
        page_state.more_like_id,
        page_state.top_k,
        page_state.min_score,
        repr(search_filter(page_state)),
        page_state.newest,
        repr(search_body(page_state).get("terms")),
        page_state.only_matches,
        page_state.fold,
        page_state.names,
        page_state.variety,
    )
    if st.session_state.get("signature") != signature:
        st.session_state.signature = signature
        st.session_state.pages = 1


def search(client: ApiClient, page_state: SearchState) -> dict[str, Any]:
    """Ask the API: POST /search/image when there are images to send, else POST /search."""
    files = upload_files(page_state)
    if files:
        return client.search_image(files, **search_body(page_state))
    return client.search(**search_body(page_state))


# The results -----------------------------------------------------------------------------------------------------


def show_results(client: ApiClient, response: dict[str, Any], limit: int) -> None:
    """The API's notes, a line on what was found, the grid, and "Load more" while there may be more."""
    results = response["results"]
    for note in response.get("notes", []):
        st.caption(f"ℹ️ {note}")
    cutoff = response.get("cutoff")
    if not results and cutoff:
        st.warning(
            "Nothing in the collection stands out for this query. Try other words, or see the closest images anyway.",
            icon="🔍",
        )
        st.button("Show the closest anyway", on_click=state.show_closest_anyway)
        return
    if not results:
        st.warning("No results. Try other words, a lower minimum score, or fewer filters in the sidebar.", icon="🔍")
        return
    folded = sum(len(hit.get("folded") or []) for hit in results)
    st.caption(
        f"{len(results)} result{'s' if len(results) != 1 else ''} in {response['took_ms']:.0f} ms"
        + (f" · only matches: {cutoff['kept']:,} stand out from the collection" if cutoff else "")
        + (f" · {folded} near-duplicates folded" if folded else "")
    )
    render_grid(client, results)
    if len(results) == limit and limit < MAX_RESULTS and not (cutoff and cutoff["kept"] <= limit + folded):
        st.button("Load more", on_click=state.load_more, width="stretch")
