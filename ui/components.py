"""Small render functions the views share: messages, the result grid and its image cards, the preview, the query
builder; and the text helpers that show untrusted names safely (file names and tags come from anyone)."""

from __future__ import annotations

import re
from pathlib import PurePath

import streamlit as st

from imgsearch.ui import state
from imgsearch.ui.api_client import ApiClient, ApiError, ApiUnreachable

COLUMNS = 5
MAX_CHIPS = 4  # tag chips under a result; the preview lists them all
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]

_MARKUP = re.compile(r"([\\`*_\[\]|~<>$:])")  # those that can act in the middle of a line


# Text ------------------------------------------------------------------------------------------------------------


def plain(text: str) -> str:
    """``text`` with the characters Markdown would read as markup taken out (tags come from any API client)."""
    return "".join(" " if char in "[]()*_`\\<>:#|~$" else char for char in text).strip()


def escaped(text: str) -> str:
    """``text`` shown as it is in Markdown: every character Markdown reads as markup is escaped."""
    return _MARKUP.sub(r"\\\1", text)


def highlighted(text: str, words: list[str]) -> str:
    """``text`` (the text read in a picture: anyone's) as Markdown, every place one of ``words`` occurs in it
    marked, case-blind and inside longer words too (as the search matches it); lines kept."""
    wanted = sorted({word.lower() for word in words if len(word) >= 2}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(word) for word in wanted), re.IGNORECASE) if wanted else None
    lines = []
    for line in text.splitlines():
        if pattern is None:
            lines.append(escaped(line))
            continue
        pieces, end = [], 0
        for match in pattern.finditer(line):
            pieces.append(escaped(line[end : match.start()]))
            pieces.append(f":orange-background[**{escaped(match.group())}**]")
            end = match.end()
        lines.append("".join(pieces) + escaped(line[end:]))
    return "  \n".join(lines)


def query_words() -> list[str]:
    """The words of the query on the page: the typed text and the query builder's word terms."""
    texts = [st.session_state.get("query_text") or ""]
    texts += [term["value"] for term in st.session_state.get("terms", []) if term.get("kind") == "text"]
    return re.findall(r"[^\W_]+", " ".join(texts))


def tag_chips(tags: list[str]) -> str:
    return " ".join(f":violet-badge[{plain(tag)}]" for tag in tags[:MAX_CHIPS])


def show_error(exc: Exception) -> None:
    if isinstance(exc, ApiUnreachable):
        st.error(str(exc), icon="🔌")
    else:
        st.error(str(exc), icon="⚠️")


# Explanations ----------------------------------------------------------------------------------------------------


def term_name(part: dict) -> str:
    """An explanation's term as the page shows it: an indexed image by its file name, not its id."""
    term = part["term"]
    if term.startswith("image "):
        name = state.image_name(term.removeprefix("image "))
        term = f"image {name}" if name else term
    return term


def name_match(part: dict) -> str:
    """What a names-only term of an explanation found."""
    return f"name match, rank {part['name_rank']}" if part.get("name_rank") else "no name match"


def explanation_row(part: dict) -> dict:
    """One term of a result's explanation, for the preview's table."""
    if part.get("cosine") is None:
        return {
            "term": term_name(part),
            "weight": part["weight"],
            "cosine": None,
            "share of score": None,
            "names": name_match(part),
        }
    return {
        "term": term_name(part),
        "weight": part["weight"],
        "cosine": round(part["cosine"], 3),
        "share of score": round(part["contribution"], 3),
        "names": "",
    }


def explanation_text(hit: dict) -> str | None:
    """A result's explanation as short lines, for the tooltip on its score."""
    lines = []
    for part in hit.get("explanation") or []:
        term = escaped(term_name(part))
        if part.get("cosine") is not None:
            lines.append(
                f"{term}: cosine {part['cosine']:+.3f} × weight {part['weight']:+g} = {part['contribution']:+.3f}"
            )
        else:
            lines.append(f"{term}: {name_match(part)}")
    return "  \n".join(lines) or None


# The preview -----------------------------------------------------------------------------------------------------


@st.dialog("Preview", width="large")
def preview(client: ApiClient, hit: dict) -> None:
    try:
        st.image(client.image(hit["image_url"]), width="stretch")
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
    st.caption(f"{escaped(hit['path'])}  ·  {hit['width']}×{hit['height']}  ·  score {hit['score']:.3f}")
    if hit.get("taken_at"):
        camera = " ".join(part for part in (hit.get("camera_make"), hit.get("camera_model")) if part)
        source = "" if hit.get("taken_at_source") == "exif" else " (file time)"
        st.caption(
            f"Taken {hit['taken_at'].replace('T', ' ')}{source}"
            + (f"  ·  {camera}" if camera else "")
            + (f"  ·  {hit['format']}" if hit.get("format") else "")
        )
    if hit.get("tags"):
        st.caption(
            "Tags: "
            + "  ·  ".join(
                f"{plain(tag)} {score:.2f}"
                for tag, score in zip(hit["tags"], hit.get("tag_scores") or [], strict=False)
            )
        )
    if hit.get("image_text"):
        st.markdown("**Text in the picture**")
        st.markdown(highlighted(hit["image_text"], query_words()))
    if hit.get("explanation"):
        explanation_table(hit["explanation"])
    if hit.get("folded"):
        st.caption(
            f"{len(hit['folded'])} near-identical images folded into this one:  \n"
            + "  \n".join(f"{folded['score']:.3f} · {escaped(folded['path'])}" for folded in hit["folded"])
        )


def explanation_table(explanation: list[dict]) -> None:
    """ "Why it matched": the preview's table of a result's terms."""
    st.markdown("**Why it matched**")
    rows = [explanation_row(part) for part in explanation]
    if not any(row["names"] for row in rows):  # no names-only term: no column for it
        rows = [{k: v for k, v in row.items() if k != "names"} for row in rows]
    st.dataframe(rows, hide_index=True)


# The result grid -------------------------------------------------------------------------------------------------


def render_grid(client: ApiClient, results: list[dict]) -> None:
    """Results in rows of COLUMNS image cards; a result's folded near-duplicates, when expanded, under its row."""
    thumbnails = client.images([hit["thumbnail_url"] for hit in results])
    expanded = st.session_state.get("expanded", set())
    for row_start in range(0, len(results), COLUMNS):
        row = results[row_start : row_start + COLUMNS]
        for column, hit, thumb in zip(
            st.columns(COLUMNS), row, thumbnails[row_start : row_start + COLUMNS], strict=False
        ):
            with column:
                image_card(client, hit, thumb, expanded)
        for hit in row:
            if hit["id"] in expanded and hit.get("folded"):
                render_folded(client, hit)


def image_card(client: ApiClient, hit: dict, thumb: bytes | None, expanded: set[str]) -> None:
    """One result: its thumbnail, score and name, tag chips, and what can be done with it."""
    name = PurePath(hit["path"]).name
    if thumb:
        st.image(thumb, width="stretch")
    else:
        st.caption("(no thumbnail)")
    taken = f" · {hit['taken_at'][:10]}" if hit.get("taken_at") else ""
    by_name = " · 🔤 word match" if hit.get("name_match") or hit.get("text_match") else ""
    st.caption(f"**{hit['score']:.3f}** · {escaped(name)}{taken}{by_name}", help=explanation_text(hit))
    if hit.get("tags"):
        st.markdown(tag_chips(hit["tags"]))
    if hit.get("folded"):
        shown = hit["id"] in expanded
        st.button(
            f"{'−' if shown else '+'}{len(hit['folded'])} similar",
            key=f"similar-{hit['id']}",
            on_click=state.toggle_expanded,
            args=(hit["id"],),
            width="stretch",
            help="near-identical images folded into this one",
        )
    st.button(
        "More like this",
        key=f"like-{hit['id']}",
        on_click=state.start_more_like_this,
        args=(hit["id"], name),
        width="stretch",
    )
    st.button(
        "Add to query",
        key=f"add-{hit['id']}",
        on_click=state.add_term,
        width="stretch",
        args=("image", hit["id"], name, thumb),
    )
    if st.button("View large", key=f"view-{hit['id']}", width="stretch"):
        preview(client, hit)


def render_folded(client: ApiClient, hit: dict) -> None:
    """The near-identical images folded into ``hit``, in a row under its own."""
    with st.container(border=True):
        st.caption(f"Similar to {escaped(PurePath(hit['path']).name)}")
        folded = hit["folded"]
        thumbnails = client.images([image["thumbnail_url"] for image in folded])
        for start in range(0, len(folded), COLUMNS):
            for column, image, thumb in zip(
                st.columns(COLUMNS), folded[start : start + COLUMNS], thumbnails[start : start + COLUMNS], strict=False
            ):
                with column:
                    if thumb:
                        st.image(thumb, width="stretch")
                    st.caption(f"**{image['score']:.3f}** · {escaped(PurePath(image['path']).name)}")


# The query builder -----------------------------------------------------------------------------------------------


def query_builder() -> None:
    """The terms added to the typed words: each with a sign and a weight slider, and ways to add more."""
    terms = st.session_state.terms
    with st.expander(
        f"Combine words and images ({len(terms)} added)" if terms else "Combine words and images", expanded=bool(terms)
    ):
        for term in terms:
            term_row(term)
        words, image = st.columns(2)
        words.text_input(
            "Add words", key="add_words", on_change=state.add_typed_term, placeholder="golden hour  (then Enter)"
        )
        upload_key = f"add-upload-{st.session_state.get('upload_generation', 0)}"
        image.file_uploader(
            "Add an image", type=IMAGE_TYPES, key=upload_key, on_change=state.add_uploaded_term, args=(upload_key,)
        )
        st.caption(
            "Every term has a weight; “not like” pulls results away. “Add to query” under a result adds "
            'that image. Put words in "quotes" to match file and folder names only.'
        )


def term_row(term: dict) -> None:
    """One term of the query builder: its picture and label, its sign, its weight, and a button to remove it."""
    kind, key = term["kind"], term["key"]
    picture, label, sign, weight, remove = st.columns([1, 3, 2, 4, 1], vertical_alignment="center")
    if term["data"]:
        picture.image(term["data"], width="stretch")
    else:
        picture.markdown("🔤" if kind == "text" else "🖼️")
    label.markdown(f"“{escaped(term['label'])}”" if kind == "text" else escaped(term["label"]))
    sign.radio(
        "Sign",
        ["+", "−"],
        key=f"sign-{key}",
        horizontal=True,
        label_visibility="collapsed",
        format_func=lambda s: "+ like" if s == "+" else "− not like",
        help="like: results should look like this; not like: results are pushed away from it",
    )
    weight.slider(
        "Weight",
        0.1,
        3.0,
        1.0,
        step=0.1,
        key=f"weight-{key}",
        label_visibility="collapsed",
        help="how much this term counts beside the others",
    )
    remove.button("✕", key=f"remove-term-{key}", on_click=state.remove_term, args=(key,), help="remove this term")
