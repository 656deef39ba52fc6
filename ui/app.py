"""imgsearch in the browser: search by words or by an example image, browse, "more like this".

Run with `imgsearch ui` (ui/launch.py starts this file with `streamlit run`). Every piece of data comes from the
search API over HTTP. This file is the entry point only: what every view shares (the page, the password, the API
client, the title and the view switch), then the view chosen. The views are search_view.py and labels_view.py,
built from components.py; search_request.py builds the search request from what the Search view shows.
"""

from __future__ import annotations

import hmac
import os
import time
from functools import partial
from typing import Any

import streamlit as st

from imgsearch.ui import labels_view, search_view
from imgsearch.ui.api_client import ApiClient, ApiError, ApiUnreachable
from imgsearch.ui.components import show_error
from imgsearch.ui.state import init_state


@st.cache_resource
def get_client(base_url: str, api_key: str) -> ApiClient:
    return ApiClient(base_url, api_key)


def api_settings() -> tuple[str, str]:
    return os.environ.get("IMGSEARCH_API_URL", "http://127.0.0.1:8000"), os.environ.get("IMGSEARCH_API_KEY", "")


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


def pages(client: ApiClient, health: dict[str, Any], base_url: str) -> dict[str, st.Page]:
    """The views, by title (the view switch's options, in its order): each a page of st.navigation, with a URL of
    its own."""
    return {
        "Search": st.Page(
            partial(search_view.render, client, health, base_url), title="Search", url_path="search", default=True
        ),
        "Label sets": st.Page(partial(labels_view.render, client), title="Label sets", url_path="labels"),
    }


def view_switched() -> None:
    st.session_state.view_switched = True


def choose_view(views: dict[str, st.Page]) -> st.Page:
    """The view to draw. The sidebar's switch chooses it; a URL, a reload or the browser's back button choose
    it too (the switch then follows). The menu of st.navigation is hidden: the switch is the menu."""
    page = st.navigation(list(views.values()), position="hidden")
    if not st.session_state.pop("view_switched", False):
        st.session_state.view = page.title  # the page shown, not a click on the switch: the switch follows it
    with st.sidebar:
        view = st.radio(
            "View", list(views), key="view", horizontal=True, label_visibility="collapsed", on_change=view_switched
        )
    if view != page.title:
        st.switch_page(views[view])  # reruns on that page
    return page


def main() -> None:
    st.set_page_config(page_title="imgsearch", page_icon="🔎", layout="wide")
    require_password()
    init_state()
    base_url, api_key = api_settings()
    client = get_client(base_url, api_key)
    st.title("imgsearch")
    try:
        health = client.health()
    except (ApiError, ApiUnreachable) as exc:
        show_error(exc)
        st.stop()
    choose_view(pages(client, health, base_url)).run()


main()
