"""imgsearch in the browser: search by words or by an example image, browse, "more like this".

Run with `imgsearch ui`. Every piece of data comes from the search API over HTTP.
"""

from __future__ import annotations

import hmac
import os
import time
from datetime import date
from pathlib import PurePath

import streamlit as st

from ui.api_client import ApiClient, ApiError, ApiUnreachable

COLUMNS = 5
MAX_CHIPS = 4  # tag chips under a result; the preview lists them all
TAG_JOB_TIMEOUT_S = 600
MAX_RESULTS = 200  # the API's limit per request
FORMATS = ["JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "TIFF", "BMP", "MPO"]  # as Pillow names them
EARLIEST, LATEST = date(1826, 1, 1), date(2200, 12, 31)

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
    st.session_state.more_like = {"id": image_id, "name": name}
    st.session_state.query_text = ""
    st.session_state.pages = 1


def clear_more_like_this() -> None:
    st.session_state.more_like = None
    st.session_state.pages = 1


@st.dialog("Preview", width="large")
def preview(client: ApiClient, hit: dict) -> None:
    try:
        st.image(client.image(hit["image_url"]), use_container_width=True)
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
    st.caption(f"{hit['path']}  ·  {hit['width']}×{hit['height']}  ·  score {hit['score']:.3f}")
    if hit.get("taken_at"):
        camera = " ".join(part for part in (hit.get("camera_make"), hit.get("camera_model")) if part)
        source = "" if hit.get("taken_at_source") == "exif" else " (file time)"
        st.caption(f"Taken {hit['taken_at'].replace('T', ' ')}{source}" + (f"  ·  {camera}" if camera else "")
                   + (f"  ·  {hit['format']}" if hit.get("format") else ""))
    if hit.get("tags"):
        st.caption("Tags: " + "  ·  ".join(f"{plain(tag)} {score:.2f}"
                                          for tag, score in zip(hit["tags"], hit.get("tag_scores") or [])))


def plain(text: str) -> str:
    """``text`` with the characters Markdown would read as markup taken out (tags come from any API client)."""
    return "".join(" " if char in "[]()*_`\\<>:#|~$" else char for char in text).strip()


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
        upload = st.file_uploader("…or drop an example image", type=["jpg", "jpeg", "png", "webp", "gif", "bmp",
                                                                      "tif", "tiff"])

    more_like = st.session_state.more_like
    if more_like:
        st.info(f"Showing images like **{more_like['name']}**")
        st.button("✕ Back to text search", on_click=clear_more_like_this)

    if not (text.strip() or upload or more_like):
        st.caption("Type a few words, drop an image, or pick “More like this” on a result.")
        return

    bounds = {"path_prefix": path_prefix or None, "taken_after": taken_after and taken_after.isoformat(),
              "taken_before": taken_before and taken_before.isoformat(), "formats": formats or None,
              "cameras": [camera.strip()] if camera.strip() else None,
              "tags_all" if all_tags else "tags_any": chosen_tags or None}
    search_filter = {name: value for name, value in bounds.items() if value is not None} or None
    signature = (text, negative, upload.file_id if upload else None, more_like and more_like["id"], top_k,
                 min_score, repr(search_filter), newest)
    if st.session_state.get("signature") != signature:
        st.session_state.signature = signature
        st.session_state.pages = 1
    limit = min(MAX_RESULTS, top_k * st.session_state.pages)

    try:
        query = dict(
            text=text.strip() or None, negative_text=negative.strip() or None, limit=limit,
            min_score=min_score if min_score > -1.0 else None,
            filter=search_filter, sort="newest" if newest else None,
        )
        if upload and not more_like:
            response = client.search_image(upload.getvalue(), upload.name, **query)
        else:
            response = client.search(image_id=more_like["id"] if more_like else None, **query)
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return

    results = response["results"]
    for note in response.get("notes", []):
        st.caption(f"ℹ️ {note}")
    if not results:
        st.warning("No results. Try other words, a lower minimum score, or fewer filters in the sidebar.", icon="🔍")
        return
    st.caption(f"{len(results)} results in {response['took_ms']:.0f} ms")
    render_grid(client, results)
    if len(results) == limit and limit < MAX_RESULTS:
        st.button("Load more", on_click=lambda: st.session_state.update(pages=st.session_state.pages + 1),
                  use_container_width=True)


def render_grid(client: ApiClient, results: list[dict]) -> None:
    thumbnails = client.images([hit["thumbnail_url"] for hit in results])
    for row_start in range(0, len(results), COLUMNS):
        columns = st.columns(COLUMNS)
        for column, hit, thumb in zip(columns, results[row_start:row_start + COLUMNS],
                                      thumbnails[row_start:row_start + COLUMNS]):
            name = PurePath(hit["path"]).name
            with column:
                if thumb:
                    st.image(thumb, use_container_width=True)
                else:
                    st.caption("(no thumbnail)")
                taken = f" · {hit['taken_at'][:10]}" if hit.get("taken_at") else ""
                st.caption(f"**{hit['score']:.3f}** · {name}{taken}")
                if hit.get("tags"):
                    st.markdown(tag_chips(hit["tags"]))
                st.button("More like this", key=f"like-{hit['id']}", on_click=start_more_like_this,
                          args=(hit["id"], name), use_container_width=True)
                if st.button("View large", key=f"view-{hit['id']}", use_container_width=True):
                    preview(client, hit)


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
