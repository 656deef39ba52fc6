"""The API's in-memory vector copy against real Milvus Lite: exact results, never behind a write."""

from __future__ import annotations

import time

import numpy as np
import pytest

from imgsearch_core.store.fields import SearchFilter
from imgsearch_core.store.filters import ImageFilter
from search_api.services.vector_mirror import VectorMirror

DIM = 16


def where(**bounds) -> ImageFilter:
    return ImageFilter.from_request(SearchFilter(**bounds))


def unit_rows(n: int, seed: int, prefix: str = "/lib/") -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"{seed:04d}{i:012d}", "path": f"{prefix}{i % 7}/img{i}.jpg", "size": 1, "mtime_ns": 1,
             "content_hash": f"h{seed}-{i}", "width": 100 + i % 50, "height": 80 + i % 30, "indexed_at": 1,
             "vector": vectors[i]} for i in range(n)]


@pytest.fixture
def filled(store, encoder):
    store.ensure_collection("test-model", DIM)
    rows = unit_rows(500, seed=1)
    for start in range(0, 500, 100):
        store.upsert(rows[start:start + 100])
    return rows


@pytest.fixture
def mirror(store, filled):
    mirror = VectorMirror(store, DIM)
    mirror.sync_now()
    return mirror


def test_background_thread_makes_the_mirror_fresh(store, filled):
    mirror = VectorMirror(store, DIM, poll_s=0.05)
    mirror.start()
    try:
        assert mirror.wait_until_fresh(30) and mirror.count() == 500
    finally:
        mirror.stop()


def brute_force(rows, query, k, keep=lambda row: True):
    kept = [r for r in rows if keep(r)]
    scores = np.array([float(r["vector"] @ query) for r in kept])
    order = np.argsort(-scores)[:k]
    return [kept[i]["id"] for i in order]


def test_mirror_search_is_the_exact_top_k(mirror, filled):
    query = unit_rows(1, seed=9)[0]["vector"]
    hits = mirror.search(query, limit=10, offset=0)
    assert [h.id for h in hits] == brute_force(filled, query, 10)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    page = mirror.search(query, limit=5, offset=5)
    assert [h.id for h in page] == brute_force(filled, query, 10)[5:]


@pytest.mark.parametrize("depth", [1, 2, 64, 499, 500, 501, 2000])
def test_every_depth_of_results_is_exact_up_to_the_whole_collection(mirror, filled, depth):
    query = unit_rows(1, seed=11)[0]["vector"]
    assert [h.id for h in mirror.search(query, limit=depth, offset=0)] == brute_force(filled, query, depth)
    last = mirror.search(query, limit=10, offset=depth - 1)
    assert [h.id for h in last] == brute_force(filled, query, depth + 9)[depth - 1:]


def test_mirror_filters_match_the_same_filter_done_by_hand(mirror, filled):
    query = unit_rows(1, seed=10)[0]["vector"]
    hits = mirror.search(query, 20, 0, where(path_prefix="/lib/3/", min_width=120, max_height=100))
    expected = brute_force(filled, query, 20, lambda r: r["path"].startswith("/lib/3/") and r["width"] >= 120
                           and r["height"] <= 100)
    assert [h.id for h in hits] == expected and hits


def test_a_write_makes_the_mirror_step_aside_until_it_has_caught_up(mirror, store, filled):
    new = unit_rows(3, seed=2, prefix="/new/")
    for row in new:
        row["indexed_at"] = int(time.time())  # as the indexer writes it
    store.upsert(new)
    assert not mirror.fresh and mirror.search(new[1]["vector"], limit=1, offset=0) is None
    mirror.sync_now()
    assert mirror.search(new[1]["vector"], limit=1, offset=0)[0].id == new[1]["id"]
    store.delete([filled[0]["id"]])
    assert mirror.search(filled[0]["vector"], limit=1, offset=0) is None
    mirror.sync_now()
    assert filled[0]["id"] not in {h.id for h in mirror.search(filled[0]["vector"], limit=5, offset=0)}
    assert mirror.count() == 502


def test_a_stale_mirror_answers_nothing(store, filled):
    mirror = VectorMirror(store, DIM)  # never started: never fresh
    assert mirror.search(filled[0]["vector"], limit=3, offset=0) is None
    assert mirror.count() is None


def test_reconcile_catches_a_write_whose_token_bump_never_happened(mirror, store, filled):
    token_file = store._generation_file()
    before = token_file.read_text()
    row = unit_rows(1, seed=3, prefix="/killed/")[0]
    row["indexed_at"] = int(time.time())
    store.upsert([row])
    token_file.write_text(before)  # as if the writer died right after its write
    assert mirror.fresh and row["id"] not in {h.id for h in mirror.search(row["vector"], limit=1, offset=0)}
    mirror.reconcile()
    assert mirror.search(row["vector"], limit=1, offset=0)[0].id == row["id"]


def test_a_write_stamped_long_ago_is_caught_up_too(mirror, store, filled):
    # indexed_at comes from the writer's clock: a machine whose clock is behind, or a restored backup.
    old = {**unit_rows(1, seed=5, prefix="/restored/")[0], "indexed_at": 1}
    changed = {**filled[7], "vector": old["vector"], "indexed_at": 2}  # an indexed row rewritten, stamped old
    store.upsert([old, changed])
    mirror.sync_now()
    assert mirror.search(old["vector"], limit=2, offset=0)[0].id in {old["id"], changed["id"]}
    assert {h.id for h in mirror.search(old["vector"], limit=2, offset=0)} == {old["id"], changed["id"]}
    assert mirror.count() == 501


def test_the_copy_is_refused_where_no_writer_keeps_a_generation_token(tmp_path):
    from pydantic import ValidationError

    from imgsearch_core.settings import Settings

    with pytest.raises(ValidationError, match="IMGSEARCH_VECTOR_CACHE=on needs the embedded Milvus Lite store"):
        Settings(milvus_uri="http://milvus:19530", vector_cache="on")
    assert Settings(milvus_uri="http://milvus:19530", vector_cache="auto").vector_cache == "auto"
    assert Settings(milvus_uri=str(tmp_path / "m.db"), vector_cache="on").vector_cache == "on"


def test_background_thread_catches_up_after_every_later_write(store, filled):
    mirror = VectorMirror(store, DIM, poll_s=0.05)
    mirror.start()
    try:
        assert mirror.wait_until_fresh(30)
        for round_ in range(3):
            new = unit_rows(2, seed=20 + round_, prefix=f"/round{round_}/")
            for row in new:
                row["indexed_at"] = int(time.time())
            store.upsert(new)
            assert mirror.wait_until_fresh(30), f"no catch-up after write {round_ + 1}"
            assert mirror.search(new[0]["vector"], limit=1, offset=0)[0].id == new[0]["id"]
        store.delete([filled[0]["id"]])
        assert mirror.wait_until_fresh(30) and mirror.count() == 505
        assert filled[0]["id"] not in {h.id for h in mirror.search(filled[0]["vector"], limit=5, offset=0)}
    finally:
        mirror.stop()


def test_an_empty_collection_gives_an_empty_copy_that_answers_and_then_fills(store):
    store.ensure_collection("test-model", DIM)
    mirror = VectorMirror(store, DIM)
    mirror.sync_now()
    assert mirror.fresh and mirror.count() == 0
    query = unit_rows(1, seed=9)[0]["vector"]
    assert mirror.search(query, 10, 0) == []
    assert mirror.search(query, 10, 0, where(path_prefix="/lib/", min_width=1)) == []
    rows = [{**row, "indexed_at": int(time.time())} for row in unit_rows(20, seed=3)]  # written now, as the indexer does
    store.upsert(rows)
    mirror.sync_now()
    hits = mirror.search(rows[4]["vector"], 3, 0)
    assert mirror.count() == 20 and hits[0].id == rows[4]["id"] and hits[0].row["path"] == rows[4]["path"]
    filtered = mirror.search(rows[4]["vector"], 20, 0, where(min_width=110, max_height=95))
    assert [h.id for h in filtered] == brute_force(rows, rows[4]["vector"], 20,
                                                   lambda r: r["width"] >= 110 and r["height"] <= 95)
