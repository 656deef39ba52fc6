"""imgsearch in the browser: search by words or by an example image, browse, "more like this".

Run with `imgsearch ui`. Every piece of data comes from the search API over HTTP.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from datetime import date
from pathlib import PurePath

import streamlit as st

from imgsearch.ui.api_client import ApiClient, ApiError, ApiUnreachable

COLUMNS = 5
MAX_CHIPS = 4  # tag chips under a result; the preview lists them all
TAG_JOB_TIMEOUT_S = 600
MAX_RESULTS = 200  # the API's limit per request
FORMATS = ["JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "TIFF", "BMP", "MPO"]  # as Pillow names them
EARLIEST, LATEST = date(1826, 1, 1), date(2200, 12, 31)
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]
HYBRID_WEIGHT = 0.5  # lexical_weight of the "Match names too" switch

st.set_page_config(page_title="imgsearch", page_icon="🔎", layout="wide")


@st.cache_resource
def get_client(base_url: str, api_key: str) -> ApiClient:
    return ApiClient(base_url, api_key)


def api_settings() -> tuple[str, str]:
    return os.environ.get("IMGSEARCH_API_URL", "http://127.0.0.1:8000"), os.environ.get("IMGSEARCH_API_KEY", "")


def show_error(exc: Exception) -> None:
    if isinstance(exc, ApiUnreachable):
        st.error(str(exc), icon="🔌")
    else:
        st.error(str(exc), icon="⚠️")


def start_more_like_this(image_id: str, name: str) -> None:
    """Search by this image alone: the typed words and the query builder's terms are cleared."""
    st.session_state.more_like = {"id": image_id, "name": name}
    st.session_state.setdefault("image_names", {})[image_id] = name
    st.session_state.query_text = ""
    st.session_state.terms = []
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


def query_builder() -> None:
    """The terms added to the typed words: each with a sign and a weight slider, and ways to add more."""
    terms = st.session_state.terms
    with st.expander(f"Combine words and images ({len(terms)} added)" if terms else "Combine words and images",
                     expanded=bool(terms)):
        for term in terms:
            kind, key = term["kind"], term["key"]
            picture, label, sign, weight, remove = st.columns([1, 3, 2, 4, 1], vertical_alignment="center")
            if term["data"]:
                picture.image(term["data"], width="stretch")
            else:
                picture.markdown("🔤" if kind == "text" else "🖼️")
            label.markdown(f"“{escaped(term['label'])}”" if kind == "text" else escaped(term["label"]))
            sign.radio("Sign", ["+", "−"], key=f"sign-{key}", horizontal=True, label_visibility="collapsed",
                       format_func=lambda s: "+ like" if s == "+" else "− not like",
                       help="like: results should look like this; not like: results are pushed away from it")
            weight.slider("Weight", 0.1, 3.0, 1.0, step=0.1, key=f"weight-{key}", label_visibility="collapsed",
                          help="how much this term counts beside the others")
            remove.button("✕", key=f"remove-term-{key}", on_click=remove_term, args=(key,), help="remove this term")
        words, image = st.columns(2)
        words.text_input("Add words", key="add_words", on_change=add_typed_term,
                         placeholder="golden hour  (then Enter)")
        upload_key = f"add-upload-{st.session_state.get('upload_generation', 0)}"
        image.file_uploader("Add an image", type=IMAGE_TYPES, key=upload_key, on_change=add_uploaded_term,
                            args=(upload_key,))
        st.caption("Every term has a weight; “not like” pulls results away. “Add to query” under a result adds "
                   "that image. Put words in \"quotes\" to match file and folder names only.")


def toggle_expanded(image_id: str) -> None:
    expanded = st.session_state.expanded
    expanded.symmetric_difference_update({image_id})


def show_closest_anyway() -> None:
    st.session_state.only_matches = False


def clear_more_like_this() -> None:
    st.session_state.more_like = None
    st.session_state.pages = 1


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
        st.caption(f"Taken {hit['taken_at'].replace('T', ' ')}{source}" + (f"  ·  {camera}" if camera else "")
                   + (f"  ·  {hit['format']}" if hit.get("format") else ""))
    if hit.get("tags"):
        st.caption("Tags: " + "  ·  ".join(f"{plain(tag)} {score:.2f}"
                                          for tag, score in zip(hit["tags"], hit.get("tag_scores") or [])))
    if hit.get("explanation"):
        st.markdown("**Why it matched**")
        rows = [explanation_row(part) for part in hit["explanation"]]
        if not any(row["names"] for row in rows):  # no names-only term: no column for it
            rows = [{k: v for k, v in row.items() if k != "names"} for row in rows]
        st.dataframe(rows, hide_index=True)
    if hit.get("folded"):
        st.caption(f"{len(hit['folded'])} near-identical images folded into this one:  \n"
                   + "  \n".join(f"{folded['score']:.3f} · {escaped(folded['path'])}" for folded in hit["folded"]))


def term_name(part: dict) -> str:
    """An explanation's term as the page shows it: an indexed image by its file name, not its id."""
    term = part["term"]
    if term.startswith("image "):
        name = st.session_state.get("image_names", {}).get(term.removeprefix("image "))
        term = f"image {name}" if name else term
    return term


def name_match(part: dict) -> str:
    """What a names-only term of an explanation found."""
    return f"name match, rank {part['name_rank']}" if part.get("name_rank") else "no name match"


def explanation_row(part: dict) -> dict:
    """One term of a result's explanation, for the preview's table."""
    if part.get("cosine") is None:
        return {"term": term_name(part), "weight": part["weight"], "cosine": None, "share of score": None,
                "names": name_match(part)}
    return {"term": term_name(part), "weight": part["weight"], "cosine": round(part["cosine"], 3),
            "share of score": round(part["contribution"], 3), "names": ""}


def explanation_text(hit: dict) -> str | None:
    """A result's explanation as short lines, for the tooltip on its score."""
    lines = []
    for part in hit.get("explanation") or []:
        term = escaped(term_name(part))
        if part.get("cosine") is not None:
            lines.append(f"{term}: cosine {part['cosine']:+.3f} × weight {part['weight']:+g} = "
                         f"{part['contribution']:+.3f}")
        else:
            lines.append(f"{term}: {name_match(part)}")
    return "  \n".join(lines) or None


def plain(text: str) -> str:
    """``text`` with the characters Markdown would read as markup taken out (tags come from any API client)."""
    return "".join(" " if char in "[]()*_`\\<>:#|~$" else char for char in text).strip()


def escaped(text: str) -> str:
    """``text`` shown as it is in Markdown: every character Markdown reads as markup is escaped."""
    return _MARKUP.sub(r"\\\1", text)


_MARKUP = re.compile(r"([\\`*_\[\]|~<>$:])")  # those that can act in the middle of a line


def tag_chips(tags: list[str]) -> str:
    return " ".join(f":violet-badge[{plain(tag)}]" for tag in tags[:MAX_CHIPS])


def require_password() -> None:
    """With IMGSEARCH_UI_PASSWORD set, show nothing (and ask the API nothing) until it is given."""
    expected = os.environ.get("IMGSEARCH_UI_PASSWORD", "")
    if not expected or st.session_state.get("signed_in"):
        return
    st.title("imgsearch")
    with st.form("sign-in"):
        supplied = st.text_input("Password", type="password", key="ui_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if hmac.compare_digest(supplied.encode(), expected.encode()):
            st.session_state.signed_in = True
            st.rerun()
        time.sleep(1)  # slows guessing down
        st.error("Wrong password.")
    st.stop()


def main() -> None:
    require_password()
    st.session_state.setdefault("more_like", None)
    st.session_state.setdefault("pages", 1)
    st.session_state.setdefault("terms", [])
    st.session_state.setdefault("expanded", set())
    # The relevance switches' state, set here so a button can change it and so it outlives the "Label sets"
    # view (Streamlit forgets a widget's state after a run that does not draw it).
    for key, default in (("only_matches", True), ("fold", True), ("names", False), ("variety", 0.0)):
        st.session_state[key] = st.session_state.get(key, default)
    base_url, api_key = api_settings()
    client = get_client(base_url, api_key)

    st.title("imgsearch")
    try:
        health = client.health()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        st.stop()

    with st.sidebar:
        view = st.radio("View", ["Search", "Label sets"], key="view", horizontal=True, label_visibility="collapsed")
    if view == "Label sets":
        labels_page(client)
        return

    with st.sidebar:
        st.subheader("Index")
        st.metric("Images", f"{health['count']:,}")
        st.caption(f"Model: `{PurePath(health['model']).name}` ({health['dim']}-d)  \nAPI: {base_url}")
        st.subheader("Options")
        top_k = st.slider("Results per page", 5, 100, 20, step=5)
        min_score = st.slider("Minimum score", -1.0, 1.0, -1.0, step=0.05,
                              help="hide results less similar than this (cosine similarity)")
        path_prefix = st.text_input("Only paths starting with", placeholder="/photos/2024/")
        st.subheader("Photos")
        taken_after = st.date_input("Taken on or after", value=None, min_value=EARLIEST, max_value=LATEST)
        taken_before = st.date_input("Taken before", value=None, min_value=EARLIEST, max_value=LATEST)
        formats = st.multiselect("Formats", FORMATS, placeholder="any")
        camera = st.text_input("Camera model", placeholder="X100V", help="as the photo's EXIF names it, exactly")
        newest = st.toggle("Newest first", help="the best matches, ordered by when they were taken")
        st.subheader("Tags")
        counts = tag_counts(client)
        chosen_tags = st.multiselect("Tags", list(counts), format_func=lambda tag: f"{tag} ({counts[tag]:,})",
                                     placeholder="any", key="tag_filter",
                                     help="only images tagged with these (zero-shot tags from the label sets)")
        all_tags = st.toggle("Must have every chosen tag", key="all_tags")
        if not counts:
            st.caption("No tags yet: add a label set under “Label sets” above.")

    if health["count"] == 0:
        st.info("The index is empty. Add images from a terminal with `imgsearch index ~/Pictures` "
                "(or any folder), then reload this page.", icon="📂")
        st.stop()

    text = st.text_input("Describe what you are looking for, then press Enter", key="query_text",
                         placeholder="a red bicycle leaning on a wall")
    left, right = st.columns([2, 1])
    with left:
        negative = st.text_input("…but not", placeholder="people")
    with right:
        upload = st.file_uploader("…or drop an example image", type=IMAGE_TYPES)
    query_builder()
    terms = st.session_state.terms
    matches, duplicates, by_name, variety_column = st.columns([1, 1, 1, 1], vertical_alignment="center")
    only_matches = matches.toggle("Only matches", key="only_matches",
                                  help="stop where this query's matches end, judged from its scores against the "
                                       "whole collection; off: every image, best first")
    fold = duplicates.toggle("Fold near-duplicates", key="fold",
                             help="copies, re-encodes and bursts show as one result with “+N similar”")
    names = by_name.toggle("Match names too", key="names",
                           help="hybrid search: words in file and folder names, descriptions and tags count too")
    variety = variety_column.slider("Variety", 0.0, 1.0, step=0.1, key="variety",
                                    help="towards 1: fewer look-alikes among the top results")

    more_like = st.session_state.more_like
    if more_like:
        st.info(f"Showing images like **{escaped(more_like['name'])}**")
        st.button("✕ Back to text search", on_click=clear_more_like_this)

    if not (text.strip() or upload or more_like or terms):
        st.caption("Type a few words, drop an image, or pick “More like this” on a result.")
        return

    bounds = {"path_prefix": path_prefix or None, "taken_after": taken_after and taken_after.isoformat(),
              "taken_before": taken_before and taken_before.isoformat(), "formats": formats or None,
              "cameras": [camera.strip()] if camera.strip() else None,
              "tags_all" if all_tags else "tags_any": chosen_tags or None}
    search_filter = {name: value for name, value in bounds.items() if value is not None} or None
    files = [(upload.name, upload.getvalue())] if upload and not more_like else []  # the example image
    sent_terms = []
    for term in terms:
        weight = signed_weight(term)
        if term["kind"] == "text":
            sent_terms.append({"text": term["value"], "weight": weight})
        elif term["kind"] == "image":
            sent_terms.append({"image_id": term["value"], "weight": weight})
        else:  # named by its position among the uploads
            files.append((term["value"], term["data"]))
            sent_terms.append({"upload_ref": str(len(files) - 1), "weight": weight})
    signature = (text, negative, upload.file_id if upload else None, more_like and more_like["id"], top_k,
                 min_score, repr(search_filter), newest, repr(sent_terms), only_matches, fold, names, variety)
    if st.session_state.get("signature") != signature:
        st.session_state.signature = signature
        st.session_state.pages = 1
    limit = min(MAX_RESULTS, top_k * st.session_state.pages)

    try:
        query = dict(
            text=text.strip() or None, negative_text=negative.strip() or None, limit=limit,
            min_score=min_score if min_score > -1.0 else None,
            filter=search_filter, sort="newest" if newest else None, terms=sent_terms or None,
            cutoff="auto" if only_matches else None, collapse=fold or None, diversity=variety or None,
            lexical_weight=HYBRID_WEIGHT if names else None, explain=True,
        )
        if files:
            response = client.search_image(files, **query)
        else:
            response = client.search(image_id=more_like["id"] if more_like else None, **query)
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return

    results = response["results"]
    for note in response.get("notes", []):
        st.caption(f"ℹ️ {note}")
    cutoff = response.get("cutoff")
    if not results and cutoff:
        st.warning("Nothing in the collection stands out for this query. Try other words, or see the closest "
                   "images anyway.", icon="🔍")
        st.button("Show the closest anyway", on_click=show_closest_anyway)
        return
    if not results:
        st.warning("No results. Try other words, a lower minimum score, or fewer filters in the sidebar.", icon="🔍")
        return
    folded = sum(len(hit.get("folded") or []) for hit in results)
    st.caption(f"{len(results)} result{'s' if len(results) != 1 else ''} in {response['took_ms']:.0f} ms"
               + (f" · only matches: {cutoff['kept']:,} stand out from the collection" if cutoff else "")
               + (f" · {folded} near-duplicates folded" if folded else ""))
    render_grid(client, results)
    if len(results) == limit and limit < MAX_RESULTS and not (cutoff and cutoff["kept"] <= limit + folded):
        st.button("Load more", on_click=lambda: st.session_state.update(pages=st.session_state.pages + 1),
                  width="stretch")


def render_grid(client: ApiClient, results: list[dict]) -> None:
    thumbnails = client.images([hit["thumbnail_url"] for hit in results])
    expanded = st.session_state.get("expanded", set())
    for row_start in range(0, len(results), COLUMNS):
        row = results[row_start:row_start + COLUMNS]
        for column, hit, thumb in zip(st.columns(COLUMNS), row, thumbnails[row_start:row_start + COLUMNS]):
            name = PurePath(hit["path"]).name
            with column:
                if thumb:
                    st.image(thumb, width="stretch")
                else:
                    st.caption("(no thumbnail)")
                taken = f" · {hit['taken_at'][:10]}" if hit.get("taken_at") else ""
                by_name = " · 🔤 name match" if hit.get("name_match") else ""
                st.caption(f"**{hit['score']:.3f}** · {escaped(name)}{taken}{by_name}", help=explanation_text(hit))
                if hit.get("tags"):
                    st.markdown(tag_chips(hit["tags"]))
                if hit.get("folded"):
                    shown = hit["id"] in expanded
                    st.button(f"{'−' if shown else '+'}{len(hit['folded'])} similar", key=f"similar-{hit['id']}",
                              on_click=toggle_expanded, args=(hit["id"],), width="stretch",
                              help="near-identical images folded into this one")
                st.button("More like this", key=f"like-{hit['id']}", on_click=start_more_like_this,
                          args=(hit["id"], name), width="stretch")
                st.button("Add to query", key=f"add-{hit['id']}", on_click=add_term, width="stretch",
                          args=("image", hit["id"], name, thumb))
                if st.button("View large", key=f"view-{hit['id']}", width="stretch"):
                    preview(client, hit)
        for hit in row:
            if hit["id"] in expanded and hit.get("folded"):
                render_folded(client, hit)


def render_folded(client: ApiClient, hit: dict) -> None:
    """The near-identical images folded into ``hit``, in a row under its own."""
    with st.container(border=True):
        st.caption(f"Similar to {escaped(PurePath(hit['path']).name)}")
        folded = hit["folded"]
        thumbnails = client.images([image["thumbnail_url"] for image in folded])
        for start in range(0, len(folded), COLUMNS):
            for column, image, thumb in zip(st.columns(COLUMNS), folded[start:start + COLUMNS],
                                            thumbnails[start:start + COLUMNS]):
                with column:
                    if thumb:
                        st.image(thumb, width="stretch")
                    st.caption(f"**{image['score']:.3f}** · {escaped(PurePath(image['path']).name)}")


def tag_counts(client: ApiClient) -> dict[str, int]:
    try:
        return client.tags()["tags"]
    except (ApiError, ApiUnreachable):
        return {}


def labels_page(client: ApiClient) -> None:
    """Paste a label set, tag every image from it, see the counts, open the top images of a label."""
    st.header("Label sets")
    st.caption("Paste labels, one per line. Every image is tagged from its stored vector: no file is read again, "
               "and images indexed later are tagged too.")
    try:
        sets = client.label_sets()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return
    for label_set in sets:
        left, right = st.columns([4, 1])
        left.markdown(f"**{plain(label_set['name'])}** · {label_set['labels']:,} labels · {label_set['mode']} · "
                      f"top {label_set['top']} · min score {label_set['min_score']:g}")
        if right.button("Remove", key=f"remove-{label_set['name']}"):
            run_tag_job(client, lambda name=label_set["name"]: client.delete_label_set(name))
            st.rerun()

    with st.form("label-set"):
        name = st.text_input("Name", value="labels", max_chars=64, help="a set of the same name is replaced")
        pasted = st.text_area("Labels, one per line", height=200, placeholder="dog\ncat\nbeach\nsnow")
        first, second, third = st.columns(3)
        top = first.number_input("Labels per image, at most", 1, 16, 3)
        mode = second.selectbox("Score", ["cosine", "softmax"],
                                help="cosine: how similar image and label are; softmax: CLIP's classifier over "
                                     "the set's labels (a probability)")
        min_score = third.number_input("Minimum score", -1.0, 1.0, value=None, step=0.01, placeholder="default",
                                       help="default 0.25 for cosine, 0.1 for softmax")
        templates = st.text_input("Prompt templates", value="a photo of a {}.",
                                  help="{} is where the label goes; separate several with | to average them")
        submitted = st.form_submit_button("Tag images", type="primary")
    if submitted:
        labels = [line.strip() for line in pasted.splitlines() if line.strip() and not line.strip().startswith("#")]
        if not labels:
            st.warning("Paste at least one label.")
        else:
            body = dict(name=name.strip(), labels=labels, top=int(top), mode=mode, min_score=min_score,
                        templates=[t.strip() for t in templates.split("|") if t.strip()] or None)
            report = run_tag_job(client, lambda: client.put_label_set(**body))
            if report is not None:
                st.session_state.tag_report = report
                st.rerun()  # the list of sets above shows the new one

    report = st.session_state.get("tag_report")
    if not report:
        return
    counts = report["counts"]
    st.subheader(f"“{plain(report['label_set'] or '')}”: {report['tagged']:,} of {report['images']:,} images tagged")
    st.dataframe([{"label": label, "images": count} for label, count in
                  sorted(counts.items(), key=lambda item: (-item[1], item[0]))], hide_index=True)
    label = st.selectbox("Open the top images of", [label for label, count in counts.items() if count],
                         index=None, placeholder="a label", key="open_label")
    if label:
        try:
            response = client.search(text=f"a photo of a {label}.", limit=20, filter={"tags_any": [label]})
        except (ApiError, ApiUnreachable) as exc:
            show_error(exc)
            return
        render_grid(client, response["results"])


def run_tag_job(client: ApiClient, start) -> dict | None:
    """Start a tagging job and wait for it with a progress bar; its report, or None after showing the error."""
    try:
        job = start()
        bar = st.progress(0.0, text="tagging…")
        deadline = time.monotonic() + TAG_JOB_TIMEOUT_S
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = client.job(job["job_id"])
            bar.progress(job["processed"] / job["total"] if job["total"] else 0.0,
                         text=f"tagging… {job['processed']:,} of {job['total']:,} images")
        bar.empty()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return None
    if job["state"] != "done":
        st.error(f"Tagging {job['state']}: {job.get('error') or 'still running; look again in a moment'}")
        return None
    return job["report"]


main()
