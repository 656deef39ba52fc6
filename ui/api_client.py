"""A small HTTP client for the search API, used by the Streamlit page."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

# Tests swap in an httpx.MockTransport here; None means real HTTP.
TRANSPORT: httpx.BaseTransport | None = None


class ApiUnreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Cannot reach the search API at {url} ({reason}). Is `imgsearch serve` running?")
        self.url = url


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"The search API answered {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class ApiClient:
    base_url: str
    api_key: str = ""
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout_s,
            transport=TRANSPORT,
            limits=httpx.Limits(max_connections=16),
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, type(exc).__name__) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail))
        return response

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        """Index and tag jobs queued or running on the server, in the order they run."""
        return self._request("GET", "/index").json()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health").json()

    def search(self, **query: Any) -> dict[str, Any]:
        return self._request("POST", "/search", json=_present(query)).json()

    def search_image(self, files: list[tuple[str, bytes]], **query: Any) -> dict[str, Any]:
        """Search with uploaded images, as (file name, bytes), and any /search fields (text, terms, filter ...).

        A term names an upload by its position here (``upload_ref: "1"``); one no term names is the example image.
        """
        form = {"query": json.dumps(_present(query))}
        parts = [("file", (name, data)) for name, data in files]
        return self._request("POST", "/search/image", files=parts, data=form).json()

    def tags(self) -> dict[str, Any]:
        """Images per tag over the whole collection: {"images", "tagged", "tags": {tag: count}}."""
        return self._request("GET", "/tags").json()

    def label_sets(self) -> list[dict[str, Any]]:
        return self._request("GET", "/labels").json()

    def put_label_set(self, **label_set: Any) -> dict[str, Any]:
        """Store a label set and start tagging every image from it; returns the job."""
        return self._request("POST", "/labels", json=_present(label_set)).json()

    def delete_label_set(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/labels/{quote(name, safe='')}").json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/index/{quote(job_id, safe='')}").json()

    def image(self, url: str) -> bytes:
        return self._request("GET", url).content

    def images(self, urls: list[str]) -> list[bytes | None]:
        """Fetch many thumbnails at once; a failed one is None rather than failing the page."""

        def fetch(url: str) -> bytes | None:
            try:
                return self.image(url)
            except (ApiError, ApiUnreachable):
                return None

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(fetch, urls))


def _present(query: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in query.items() if v not in (None, "", {})}
