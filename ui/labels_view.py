"""The "Label sets" view: paste a label set, tag every image from it, see the counts, open the top images of a
label."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from imgsearch.ui.api_client import ApiClient, ApiError, ApiUnreachable
from imgsearch.ui.components import plain, render_grid, show_error

TAG_JOB_TIMEOUT_S = 600


def render(client: ApiClient) -> None:
    """The whole view: the stored sets, the form for a new one, and the report of the last tagging."""
    st.header("Label sets")
    st.caption(
        "Paste labels, one per line. Every image is tagged from its stored vector: no file is read again, "
        "and images indexed later are tagged too."
    )
    try:
        sets = client.label_sets()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return
    stored_sets(client, sets)
    body = label_set_form()
    if body is not None:
        report = run_tag_job(client, lambda: client.put_label_set(**body))
        if report is not None:
            st.session_state.tag_report = report
            st.rerun()  # the list of sets above shows the new one
    report = st.session_state.get("tag_report")
    if report:
        tag_report(client, report)


def stored_sets(client: ApiClient, sets: list[dict[str, Any]]) -> None:
    """One line per stored label set, each with a button that removes it (and its tags)."""
    for label_set in sets:
        left, right = st.columns([4, 1])
        left.markdown(
            f"**{plain(label_set['name'])}** · {label_set['labels']:,} labels · {label_set['mode']} · "
            f"top {label_set['top']} · min score {label_set['min_score']:g}"
        )
        if right.button("Remove", key=f"remove-{label_set['name']}"):
            run_tag_job(client, lambda name=label_set["name"]: client.delete_label_set(name))
            st.rerun()


def label_set_form() -> dict[str, Any] | None:
    """The form for a new label set: the body of POST /labels once submitted with labels; else None (with a
    warning when it was submitted without any)."""
    with st.form("label-set"):
        name = st.text_input("Name", value="labels", max_chars=64, help="a set of the same name is replaced")
        pasted = st.text_area("Labels, one per line", height=200, placeholder="dog\ncat\nbeach\nsnow")
        first, second, third = st.columns(3)
        top = first.number_input("Labels per image, at most", 1, 16, 3)
        mode = second.selectbox(
            "Score",
            ["cosine", "softmax"],
            help="cosine: how similar image and label are; softmax: CLIP's classifier over "
            "the set's labels (a probability)",
        )
        min_score = third.number_input(
            "Minimum score",
            -1.0,
            1.0,
            value=None,
            step=0.01,
            placeholder="default",
            help="default 0.25 for cosine, 0.1 for softmax",
        )
        templates = st.text_input(
            "Prompt templates",
            value="a photo of a {}.",
            help="{} is where the label goes; separate several with | to average them",
        )
        submitted = st.form_submit_button("Tag images", type="primary")
    if not submitted:
        return None
    labels = [line.strip() for line in pasted.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not labels:
        st.warning("Paste at least one label.")
        return None
    return dict(
        name=name.strip(),
        labels=labels,
        top=int(top),
        mode=mode,
        min_score=min_score,
        templates=[t.strip() for t in templates.split("|") if t.strip()] or None,
    )


def tag_report(client: ApiClient, report: dict[str, Any]) -> None:
    """What the last tagging found: images per label, and the top images of a label picked from them."""
    counts = report["counts"]
    st.subheader(f"“{plain(report['label_set'] or '')}”: {report['tagged']:,} of {report['images']:,} images tagged")
    st.dataframe(
        [
            {"label": label, "images": count}
            for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        ],
        hide_index=True,
    )
    label = st.selectbox(
        "Open the top images of",
        [label for label, count in counts.items() if count],
        index=None,
        placeholder="a label",
        key="open_label",
    )
    if label:
        try:
            response = client.search(text=f"a photo of a {label}.", limit=20, filter={"tags_any": [label]})
        except (ApiError, ApiUnreachable) as exc:
            show_error(exc)
            return
        render_grid(client, response["results"])


def run_tag_job(client: ApiClient, start: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Start a tagging job and wait for it with a progress bar; its report, or None after showing the error."""
    try:
        job = start()
        bar = st.progress(0.0, text="tagging…")
        deadline = time.monotonic() + TAG_JOB_TIMEOUT_S
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = client.job(job["job_id"])
            bar.progress(
                job["processed"] / job["total"] if job["total"] else 0.0,
                text=f"tagging… {job['processed']:,} of {job['total']:,} images",
            )
        bar.empty()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        return None
    if job["state"] != "done":
        st.error(f"Tagging {job['state']}: {job.get('error') or 'still running; look again in a moment'}")
        return None
    return job["report"]
