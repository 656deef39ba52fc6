"""The API in-process with its vector copy answering searches, and a stand-in that fails if Milvus is asked instead."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


class CopyAnsweringClient(TestClient):
    """Before each search, waits until the vector copy has caught up with every write (its background thread
    must do that by itself); the copy, never Milvus, then answers."""

    def post(self, url, *args, **kwargs):
        if url.startswith("/search"):
            wait_until_copy_is_fresh(self)
        return super().post(url, *args, **kwargs)


def wait_until_copy_is_fresh(client, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/health").json()["vector_cache"] != "fresh":
        assert time.monotonic() < deadline, "the vector copy did not catch up with Milvus by itself"
        time.sleep(0.05)


def milvus_search_forbidden(*_args, **_kwargs):
    raise AssertionError("Milvus answered a search although the vector copy was fresh")
