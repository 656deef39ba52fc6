"""The vector copy against real Milvus Lite: exact results, never behind a write."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from imgsearch.store import scan as scan_module
from imgsearch.store.fields import SearchFilter
from imgsearch.store.filters import ImageFilter
from imgsearch.store.vector_copy import VectorCopy
from tests.support.vectors import DIM, unit_rows


def where(**bounds) -> ImageFilter:
    return ImageFilter.from_request(SearchFilter(**bounds))


@pytest.fixture
def filled(store, encoder):
    store.ensure_collection("test-model", DIM)
    rows = unit_rows(500, seed=1)
    for start in range(0, 500, 100):
        store.upsert(rows[start : start + 100])
    return rows


@pytest.fixture(params=["fp32", "bf16"])
def vector_copy(store, filled, request):
    """A synced copy, scanning in fp32 or in bf16 with the top checked in fp32 (store/scan.py), whatever the CPU."""
    vector_copy = VectorCopy(store, DIM)
    vector_copy._bf16 = request.param == "bf16"
    vector_copy.sync_now()
    assert (vector_copy._snapshot.low is not None) == vector_copy._bf16
    return vector_copy


def test_background_thread_makes_the_copy_fresh(store, filled):
    vector_copy = VectorCopy(store, DIM, poll_s=0.05)
    vector_copy.start()
    try:
        assert vector_copy.wait_until_fresh(30) and vector_copy.count() == 500
        # Named in a thread dump, and a daemon: a process that never calls stop() can still exit.
        threads = [t for t in threading.enumerate() if t.name == "vector-copy"]
        assert len(threads) == 1 and threads[0].daemon
    finally:
        vector_copy.stop()
    assert not [t for t in threading.enumerate() if t.name == "vector-copy"]


def test_the_background_thread_reconciles_on_its_own(store, filled):
    """A write whose token bump never happened (its writer died) is found by the thread's own reconcile."""
    vector_copy = VectorCopy(store, DIM, poll_s=0.02, reconcile_s=0.05, full_reconcile_s=0.05)
    vector_copy.start()
    try:
        assert vector_copy.wait_until_fresh(30)
        token_file = store.generation_token.path
        before = token_file.read_text()
        row = unit_rows(1, seed=4, prefix="/died/")[0]
        row["indexed_at"] = int(time.time())
        store.upsert([row])
        token_file.write_text(before)
        deadline, found = time.monotonic() + 5, None
        while time.monotonic() < deadline:
            hits = vector_copy.search_copy(row["vector"], limit=1, offset=0)  # None while the copy catches up
            if (found := hits and hits[0].id) == row["id"]:
                break
            time.sleep(0.02)
        assert found == row["id"], "the thread never reconciled"
    finally:
        vector_copy.stop()


def brute_force(rows, query, k, keep=lambda row: True):
    kept = [r for r in rows if keep(r)]
    scores = np.array([float(r["vector"] @ query) for r in kept])
    order = np.argsort(-scores)[:k]
    return [kept[i]["id"] for i in order]


def test_the_copy_search_is_the_exact_top_k(vector_copy, filled):
    query = unit_rows(1, seed=9)[0]["vector"]
    hits = vector_copy.search_copy(query, limit=10, offset=0)
    assert [h.id for h in hits] == brute_force(filled, query, 10)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    page = vector_copy.search_copy(query, limit=5, offset=5)
    assert [h.id for h in page] == brute_force(filled, query, 10)[5:]


@pytest.mark.parametrize("depth", [1, 2, 64, 499, 500, 501, 2000])
def test_every_depth_of_results_is_exact_up_to_the_whole_collection(vector_copy, filled, depth):
    query = unit_rows(1, seed=11)[0]["vector"]
    assert [h.id for h in vector_copy.search_copy(query, limit=depth, offset=0)] == brute_force(filled, query, depth)
    last = vector_copy.search_copy(query, limit=10, offset=depth - 1)
    assert [h.id for h in last] == brute_force(filled, query, depth + 9)[depth - 1 :]


def test_the_copy_filters_match_the_same_filter_done_by_hand(vector_copy, filled):
    query = unit_rows(1, seed=10)[0]["vector"]
    hits = vector_copy.search_copy(query, 20, 0, where(path_prefix="/lib/3/", min_width=120, max_height=100))
    expected = brute_force(
        filled, query, 20, lambda r: r["path"].startswith("/lib/3/") and r["width"] >= 120 and r["height"] <= 100
    )
    assert [h.id for h in hits] == expected and hits


def test_a_write_makes_the_copy_step_aside_until_it_has_caught_up(vector_copy, store, filled):
    new = unit_rows(3, seed=2, prefix="/new/")
    for row in new:
        row["indexed_at"] = int(time.time())  # as the indexer writes it
    store.upsert(new)
    assert not vector_copy.fresh and vector_copy.search_copy(new[1]["vector"], limit=1, offset=0) is None
    vector_copy.sync_now()
    assert vector_copy.search_copy(new[1]["vector"], limit=1, offset=0)[0].id == new[1]["id"]
    store.delete([filled[0]["id"]])
    assert vector_copy.search_copy(filled[0]["vector"], limit=1, offset=0) is None
    vector_copy.sync_now()
    assert filled[0]["id"] not in {h.id for h in vector_copy.search_copy(filled[0]["vector"], limit=5, offset=0)}
    assert vector_copy.count() == 502


def test_a_stale_copy_answers_nothing(store, filled):
    vector_copy = VectorCopy(store, DIM)  # never started: never fresh
    assert vector_copy.search_copy(filled[0]["vector"], limit=3, offset=0) is None
    assert not vector_copy.fresh and vector_copy.count() == 500  # counted by Milvus


def test_the_copy_searches_like_the_gateway_and_asks_milvus_while_behind(vector_copy, store, filled, monkeypatch):
    queries = np.stack([filled[3]["vector"], filled[9]["vector"]])
    from_milvus = store.search(queries, 5, 0, where(min_width=110))
    assert [[h.id for h in hits] for hits in vector_copy.search(queries, 5, 0, where(min_width=110))] == [
        [h.id for h in hits] for hits in from_milvus
    ]
    monkeypatch.setattr(store, "search", lambda *a, **k: pytest.fail("Milvus searched although the copy was fresh"))
    assert vector_copy.search(queries[:1], 1, 0)[0][0].id == filled[3]["id"]
    monkeypatch.undo()
    store.upsert(unit_rows(1, seed=8, prefix="/late/"))  # the copy is behind until it syncs
    assert vector_copy.search(queries[:1], 1, 0)[0][0].id == filled[3]["id"]
    assert vector_copy.count() == 501 and not vector_copy.fresh


def test_the_copy_answers_for_the_gateway_but_has_no_private_parts(vector_copy, store):
    assert vector_copy.creation_token() == store.creation_token() and vector_copy.collection == store.collection
    with pytest.raises(AttributeError, match="_client"):
        vector_copy._client  # noqa: B018 - the gateway's internals stay its own


def test_a_copy_of_a_collection_on_a_server_is_refused():
    class ServerStore:
        generation_token = None

    with pytest.raises(
        ValueError,
        match=r"^the vector copy needs an embedded \(Milvus Lite\) collection: a server "
        r"keeps no generation token$",
    ):
        VectorCopy(ServerStore(), DIM)


def test_reconcile_catches_a_write_whose_token_bump_never_happened(vector_copy, store, filled):
    token_file = store.generation_token.path
    before = token_file.read_text()
    row = unit_rows(1, seed=3, prefix="/killed/")[0]
    row["indexed_at"] = int(time.time())
    store.upsert([row])
    token_file.write_text(before)  # as if the writer died right after its write
    assert vector_copy.fresh and row["id"] not in {
        h.id for h in vector_copy.search_copy(row["vector"], limit=1, offset=0)
    }
    vector_copy.reconcile()
    assert vector_copy.search_copy(row["vector"], limit=1, offset=0)[0].id == row["id"]


def test_reconcile_catches_a_rewrite_that_keeps_the_row_count(vector_copy, store, filled):
    token_file = store.generation_token.path
    before = token_file.read_text()
    new_vector = unit_rows(1, seed=77)[0]["vector"]
    store.upsert([{**filled[5], "vector": new_vector, "indexed_at": 2}])  # re-embedded under the same id
    token_file.write_text(before)  # nobody bumped the token
    assert vector_copy.search_copy(new_vector, 1, 0)[0].id != filled[5]["id"]
    vector_copy.reconcile()
    assert vector_copy.search_copy(new_vector, 1, 0)[0].id == filled[5]["id"] and vector_copy.count() == 500


def test_a_write_stamped_long_ago_is_caught_up_too(vector_copy, store, filled):
    # indexed_at comes from the writer's clock: a machine whose clock is behind, or a restored backup.
    old = {**unit_rows(1, seed=5, prefix="/restored/")[0], "indexed_at": 1}
    changed = {**filled[7], "vector": old["vector"], "indexed_at": 2}  # an indexed row rewritten, stamped old
    store.upsert([old, changed])
    vector_copy.sync_now()
    assert vector_copy.search_copy(old["vector"], limit=2, offset=0)[0].id in {old["id"], changed["id"]}
    assert {h.id for h in vector_copy.search_copy(old["vector"], limit=2, offset=0)} == {old["id"], changed["id"]}
    assert vector_copy.count() == 501


def test_the_copy_is_refused_where_no_writer_keeps_a_generation_token(tmp_path):
    from pydantic import ValidationError

    from imgsearch.settings import Settings

    with pytest.raises(ValidationError, match="IMGSEARCH_VECTOR_CACHE=on needs the embedded Milvus Lite store"):
        Settings(milvus_uri="http://milvus:19530", vector_cache="on")
    assert Settings(milvus_uri="http://milvus:19530", vector_cache="auto").vector_cache == "auto"
    assert Settings(milvus_uri=str(tmp_path / "m.db"), vector_cache="on").vector_cache == "on"


def test_background_thread_catches_up_after_every_later_write(store, filled):
    vector_copy = VectorCopy(store, DIM, poll_s=0.05)
    vector_copy.start()
    try:
        assert vector_copy.wait_until_fresh(30)
        for round_ in range(3):
            new = unit_rows(2, seed=20 + round_, prefix=f"/round{round_}/")
            for row in new:
                row["indexed_at"] = int(time.time())
            store.upsert(new)
            assert vector_copy.wait_until_fresh(30), f"no catch-up after write {round_ + 1}"
            assert vector_copy.search_copy(new[0]["vector"], limit=1, offset=0)[0].id == new[0]["id"]
        store.delete([filled[0]["id"]])
        assert vector_copy.wait_until_fresh(30) and vector_copy.count() == 505
        assert filled[0]["id"] not in {h.id for h in vector_copy.search_copy(filled[0]["vector"], limit=5, offset=0)}
    finally:
        vector_copy.stop()


def test_an_empty_collection_gives_an_empty_copy_that_answers_and_then_fills(store):
    store.ensure_collection("test-model", DIM)
    vector_copy = VectorCopy(store, DIM)
    vector_copy.sync_now()
    assert vector_copy.fresh and vector_copy.count() == 0
    query = unit_rows(1, seed=9)[0]["vector"]
    assert vector_copy.search_copy(query, 10, 0) == []
    assert vector_copy.search_copy(query, 10, 0, where(path_prefix="/lib/", min_width=1)) == []
    rows = [
        {**row, "indexed_at": int(time.time())} for row in unit_rows(20, seed=3)
    ]  # written now, as the indexer does
    store.upsert(rows)
    vector_copy.sync_now()
    hits = vector_copy.search_copy(rows[4]["vector"], 3, 0)
    assert vector_copy.count() == 20 and hits[0].id == rows[4]["id"] and hits[0].row["path"] == rows[4]["path"]
    filtered = vector_copy.search_copy(rows[4]["vector"], 20, 0, where(min_width=110, max_height=95))
    assert [h.id for h in filtered] == brute_force(
        rows, rows[4]["vector"], 20, lambda r: r["width"] >= 110 and r["height"] <= 95
    )


WRITER = """
import sys
import numpy as np
from imgsearch.store import MilvusStore

store = MilvusStore(sys.argv[1], sys.argv[2])
rng = np.random.default_rng(int(sys.argv[3]))
if sys.argv[4] == "plain":  # writes as a plain pymilvus script would: nobody bumps the generation token
    store._wrote = lambda: None
ids = [row["id"] for row in store.iter_rows(fields=["id"])]
for step in range(40):
    vector = rng.standard_normal(%(dim)d).astype(np.float32)
    vector /= np.linalg.norm(vector)
    kind = rng.integers(3)
    if kind == 0 or not ids:  # a new row, stamped at any time: past, now or future
        row_id = f"w{sys.argv[3]}-{step:04d}".ljust(16, "0")
        ids.append(row_id)
    elif kind == 1:  # an existing row written again
        row_id = ids[rng.integers(len(ids))]
    else:
        store.delete([ids.pop(rng.integers(len(ids)))])
        continue
    stamp = int(rng.choice([1, 1_000_000_000, 2_000_000_000, 4_000_000_000]))
    store.upsert([{"id": row_id, "path": f"/w/{row_id}.jpg", "size": 1, "mtime_ns": 1, "content_hash": row_id,
                   "width": int(rng.integers(1, 500)), "height": 1, "indexed_at": stamp, "taken_at": stamp,
                   "taken_at_source": "exif", "format": "JPEG", "camera_make": "", "camera_model": "", "gps": "",
                   "tags": [], "tag_scores": [], "vector": vector}])
"""


@pytest.mark.slow  # a process per case: left out of make mutants, run by make test and CI
@pytest.mark.parametrize(("seed", "writer_kind"), [(1, "imgsearch"), (2, "imgsearch"), (3, "plain"), (4, "plain")])
def test_random_writes_from_another_process_are_all_caught_up(store, filled, tmp_path, seed, writer_kind):
    import subprocess
    import sys

    from tests.support.processes import spawn, stop_process

    vector_copy = VectorCopy(store, DIM, poll_s=0.02)
    vector_copy.start()
    writer = spawn(
        [sys.executable, "-c", WRITER % {"dim": DIM}, store.milvus_uri, store.collection, str(seed), writer_kind],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.wait(timeout=120) == 0, writer.stderr.read().decode()
        if writer_kind == "plain":
            vector_copy.reconcile()  # what the background thread does every 30 s
        assert vector_copy.wait_until_fresh(30)
        in_milvus = {row["id"]: row for row in store.iter_rows(with_vectors=True)}
        snapshot = vector_copy._snapshot
        assert sorted(snapshot.ids) == sorted(in_milvus)
        for i, row_id in enumerate(snapshot.ids):
            assert np.allclose(snapshot.vectors[i], in_milvus[row_id]["vector"], atol=1e-6), row_id
            assert snapshot.extra[i] == {k: v for k, v in in_milvus[row_id].items() if k != "vector"}
        query = unit_rows(1, seed=40 + seed)[0]["vector"]
        assert [h.id for h in vector_copy.search_copy(query, 20, 0, where(min_width=250))] == brute_force(
            list(in_milvus.values()), query, 20, lambda r: r["width"] >= 250
        )
    finally:
        vector_copy.stop()
        stop_process(writer)


def test_the_cheap_reconcile_catches_a_changed_row_count_and_leaves_rewrites_to_the_full_one(
    vector_copy, store, filled
):
    token_file = store.generation_token.path
    before = token_file.read_text()
    new_vector = unit_rows(1, seed=78)[0]["vector"]
    store.upsert([{**filled[6], "vector": new_vector, "indexed_at": 2}])  # same count, no token bump
    token_file.write_text(before)
    vector_copy.reconcile(full=False)
    assert vector_copy.search_copy(new_vector, 1, 0)[0].id != filled[6]["id"]  # not seen by a count
    store.delete([filled[7]["id"]])
    token_file.write_text(before)
    vector_copy.reconcile(full=False)  # the count changed: caught up, the rewrite with it
    assert vector_copy.count() == 499 and vector_copy.search_copy(new_vector, 1, 0)[0].id == filled[6]["id"]


def _threads(target, args_list):
    results, errors = [None] * len(args_list), [None] * len(args_list)

    def run(i, args):
        try:
            results[i] = target(*args)
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i, args)) for i, args in enumerate(args_list)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, errors


def hold_the_first_pass(monkeypatch, scan, queries: int) -> list[int]:
    """Make ``scan``'s first pass wait until the other queries wait for the next; returns the size of each pass."""
    passes: list[int] = []
    real_scores = scan_module._scores

    def counted(vectors, batch):
        if not passes:
            deadline = time.monotonic() + 10
            while len(scan._waiting) < queries - batch.shape[1] and time.monotonic() < deadline:
                time.sleep(0.01)
        passes.append(batch.shape[1])
        return real_scores(vectors, batch)

    monkeypatch.setattr(scan_module, "_scores", counted)
    return passes


@pytest.mark.parametrize("blas_threads_sleep", [True, False], ids=["numpy", "torch"])
def test_queries_that_arrive_during_a_pass_share_the_next_one_and_each_gets_its_own_scores(
    monkeypatch, blas_threads_sleep
):
    """Eight concurrent searches read the vectors twice, not eight times, and none gets another's scores."""
    monkeypatch.setattr(scan_module, "BLAS_THREADS_SLEEP", blas_threads_sleep)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, DIM)).astype(np.float32)
    queries = rng.standard_normal((8, DIM)).astype(np.float32)
    scan = scan_module.SharedScan()
    passes = hold_the_first_pass(monkeypatch, scan, len(queries))
    results, errors = _threads(scan.scores, [(vectors, query) for query in queries])
    assert errors == [None] * 8
    assert len(passes) == 2 and sum(passes) == 8
    for query, scores in zip(queries, results):
        np.testing.assert_allclose(scores.scores, vectors @ query, rtol=1e-5, atol=1e-5)


def test_a_pass_never_mixes_the_vectors_of_an_old_and_a_new_snapshot(monkeypatch):
    rng = np.random.default_rng(4)
    old, new = (rng.standard_normal((500, DIM)).astype(np.float32) for _ in range(2))
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    scan = scan_module.SharedScan()
    passes = hold_the_first_pass(monkeypatch, scan, len(queries))
    results, errors = _threads(scan.scores, [(old if i % 2 else new, query) for i, query in enumerate(queries)])
    assert errors == [None] * 10
    assert len(passes) >= 3  # the first, then one per snapshot
    for i, (query, scores) in enumerate(zip(queries, results)):
        np.testing.assert_allclose(scores.scores, (old if i % 2 else new) @ query, rtol=1e-5, atol=1e-5)


def test_a_failed_pass_fails_every_query_in_it(monkeypatch):
    scan = scan_module.SharedScan()
    passes = []

    def out_of_memory(vectors, batch):
        passes.append(batch.shape[1])
        deadline = time.monotonic() + 10  # the first pass waits until the other queries wait for the next
        while len(passes) == 1 and len(scan._waiting) + batch.shape[1] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise MemoryError("no room for the scores")

    monkeypatch.setattr(scan_module, "_scores", out_of_memory)
    vectors = np.ones((10, DIM), dtype=np.float32)
    results, errors = _threads(scan.scores, [(vectors, np.ones(DIM, dtype=np.float32))] * 4)
    assert results == [None] * 4 and all(isinstance(error, MemoryError) for error in errors)
    assert len(passes) == 2


@pytest.mark.parametrize("first, sleeps", [("imgsearch.cli", True), ("numpy", False)])
def test_the_imgsearch_command_makes_numpy_threads_sleep_after_a_search(first, sleeps):
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy loads: the command must set it before. Where numpy
    came first the copy scores with torch (spinning BLAS threads made the next text encode up to 3x slower)."""
    code = (
        f"import {first}, os, imgsearch, numpy; "
        "print(imgsearch.BLAS_THREADS_SLEEP, os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    shown = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert shown == [str(sleeps), "4"]
