"""What the UI remembers between runs (``st.session_state``) and the callbacks that change it.

Buttons and inputs run these as ``on_click``/``on_change`` callbacks, before the page is drawn again.
"""

from __future__ import annotations

import streamlit as st

# The relevance switches' defaults, set on every run (not by the widgets) so a button can change them and so they
# outlive the "Label sets" view (Streamlit forgets a widget's state after a run that does not draw it).
SWITCHES = (("only_matches", True), ("fold", True), ("names", True), ("variety", 0.0))


def init_state() -> None:
    """The state every view relies on, set once per session (the switches' on every run: see SWITCHES)."""
    st.session_state.setdefault("more_like", None)
    st.session_state.setdefault("pages", 1)
    st.session_state.setdefault("terms", [])
    st.session_state.setdefault("expanded", set())
    for key, default in SWITCHES:
        st.session_state[key] = st.session_state.get(key, default)


def start_more_like_this(image_id: str, name: str) -> None:
    """Search by this image alone: the typed words and the query builder's terms are cleared."""
    st.session_state.more_like = {"id": image_id, "name": name}
    st.session_state.setdefault("image_names", {})[image_id] = name
    st.session_state.query_text = ""
    st.session_state.terms = []
    st.session_state.pages = 1


def clear_more_like_this() -> None:
    st.session_state.more_like = None
    st.session_state.pages = 1


def add_term(kind: str, value: str, label: str, data: bytes | None = None) -> None:
    """Add a term to the query builder: words ("text"), an indexed image ("image") or an uploaded one ("upload").
    ``data`` is the picture the builder shows: the upload itself, or the indexed image's thumbnail."""
    key = st.session_state.next_term = st.session_state.get("next_term", 0) + 1
    if kind == "image":
        st.session_state.setdefault("image_names", {})[value] = label
    st.session_state.terms.append({"key": key, "kind": kind, "value": value, "label": label, "data": data})


def add_typed_term() -> None:
    words = st.session_state.add_words.strip()
    if words:
        add_term("text", words, words)
    st.session_state.add_words = ""


def add_uploaded_term(key: str) -> None:
    upload = st.session_state.get(key)
    if upload is not None:
        add_term("upload", upload.name, upload.name, data=upload.getvalue())
        st.session_state.upload_generation = st.session_state.get("upload_generation", 0) + 1  # an empty uploader


def remove_term(key: int) -> None:
    st.session_state.terms = [term for term in st.session_state.terms if term["key"] != key]


def signed_weight(term: dict) -> float:
    """The weight the term's slider and sign give it (the widgets' state, so it holds before they are drawn)."""
    weight = st.session_state.get(f"weight-{term['key']}", 1.0)
    return -weight if st.session_state.get(f"sign-{term['key']}", "+") == "−" else weight


def weighted_terms() -> list[dict]:
    """The query builder's terms, each with its signed weight, as ``search_request.SearchState`` takes them."""
    return [{**term, "weight": signed_weight(term)} for term in st.session_state.terms]


def image_name(image_id: str) -> str | None:
    """The file name of an indexed image the page has shown (by "More like this" or "Add to query")."""
    return st.session_state.get("image_names", {}).get(image_id)


def toggle_expanded(image_id: str) -> None:
    expanded = st.session_state.expanded
    expanded.symmetric_difference_update({image_id})


def show_closest_anyway() -> None:
    st.session_state.only_matches = False


def load_more() -> None:
    st.session_state.update(pages=st.session_state.pages + 1)
