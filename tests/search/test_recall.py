"""Search results against an exact brute-force top-k over the stored vectors, at 10,000 vectors."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgsearch.search_api.main import create_app
from imgsearch.store.fields import FileFacts, make_row
from tests.support.api import milvus_search_forbidden

N = 10_000


@pytest.fixture
def ten_thousand(store, encoder):
    store.ensure_collection(encoder.name, encoder.dim)
    rng = np.random.default_rng(42)
    vectors = rng.standard_normal((N, encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [make_row(FileFacts(f"/lib/img{i}.jpg", 1, 1, f"{i:032x}", 64, 64), vectors[i]) for i in range(N)]
    ids = [row["id"] for row in rows]
    for start in range(0, N, 2000):
        store.upsert(rows[start : start + 2000])
    store.flush()
    return ids, vectors


def recall_at_10(client, ids, vectors, encoder) -> float:
    texts = [
        "a red bicycle",
        "snow on mountains",
        "a cat asleep",
        "microscope slide",
        "blue car",
        "two dogs",
        "a bowl of fruit",
        "city at night",
        "an old map",
        "a yellow flower",
    ]
    requests = [{"text": t, "limit": 10} for t in texts]
    queries = list(encoder.embed_texts(texts).vectors)
    for i in range(0, N, N // 10):
        requests.append({"image_id": ids[i], "limit": 10})
        queries.append(vectors[i])
    found = 0
    for request, query in zip(requests, queries):
        got = [r["id"] for r in client.post("/search", json=request).json()["results"]]
        exact = [ids[i] for i in np.argsort(-(vectors @ query))[:10]]
        found += len(set(got) & set(exact))
    return found / (10 * len(requests))


@pytest.mark.slow
@pytest.mark.parametrize("vector_cache", ["off", "on"])
def test_recall_at_10_against_brute_force(ten_thousand, settings, encoder, vector_cache):
    ids, vectors = ten_thousand
    with TestClient(create_app(settings.model_copy(update={"vector_cache": vector_cache}), encoder=encoder)) as client:
        vector_copy = client.app.state.vector_copy
        assert (vector_copy is not None) == (vector_cache == "on")
        if vector_copy is not None:
            assert vector_copy.wait_until_fresh(60)
            client.app.state.store.search = milvus_search_forbidden  # the exact copy, not HNSW, must answer
        recall = recall_at_10(client, ids, vectors, encoder)
    if vector_cache == "on":
        assert recall == 1.0  # an exact search
    else:
        assert recall >= 0.95, recall  # HNSW is approximate
