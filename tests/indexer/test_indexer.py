"""Indexing on real Milvus Lite in a temporary directory, through the same code the CLI runs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch.errors import ModelMismatchError, WeightsMismatchError
from imgsearch.indexer.runner import Progress, run_index
from imgsearch.indexer.scanner import RootNotFoundError
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.store import MilvusStore, release_hosted
from imgsearch.store.fields import mtime_wall_clock
from tests.support import REPO
from tests.support.milvus import MILVUS_SERVERS, unique_collection
from tests.support.models import build_local_clip
from tests.support.photos import write_exif_photo, write_photo
from tests.support.processes import run_cli, spawn


def index(photo_dir, settings, encoder, store):
    report = run_index([str(photo_dir)], settings, encoder, store)
    accounted = report.embedded + report.unchanged + report.moved + report.copied + len(report.failed)
    assert accounted == report.scanned, report  # every file scanned is counted exactly once
    assert min(report.embedded, report.unchanged, report.moved, report.copied, report.removed) >= 0, report
    return report


@pytest.fixture(params=["embedded", *MILVUS_SERVERS])
def any_store(request, settings, milvus_servers):
    """(settings, store) on embedded Milvus Lite, or in a fresh collection on a real Milvus server."""
    if request.param != "embedded":
        settings = settings.model_copy(
            update={"milvus_uri": milvus_servers(request.param), "collection": unique_collection()}
        )
    store = MilvusStore.from_settings(settings)
    yield settings, store
    if request.param != "embedded" and store.exists():
        store.drop()
    store.close()


@pytest.mark.draws_a_bar
def test_the_progress_bar_shows_what_it_counts(capsys, monkeypatch):
    import tqdm

    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # no monitor thread outliving the test
    progress = Progress(3, show_bar=True)
    progress.advance(2)
    progress.advance()
    progress.close()
    drawn = capsys.readouterr().err
    assert "indexing" in drawn and "3/3" in drawn and "img/s" in drawn


def test_the_callback_hears_every_step_and_no_bar_is_drawn_unless_asked(capsys):
    heard = []
    progress = Progress(3, show_bar=False, callback=lambda done, total: heard.append((done, total)))
    progress.advance(2)
    progress.advance(0)
    progress.advance()
    progress.close()
    assert heard == [(0, 3), (2, 3), (3, 3)]
    Progress(0, show_bar=True).close()  # nothing to do: no bar
    assert capsys.readouterr().err == ""


def rows_by_path(store) -> dict[str, dict]:
    return {row["path"]: row for row in store.iter_metadata()}


def test_first_run_embeds_every_image_and_stores_its_metadata(photo_dir, settings, encoder, store, capfd):
    report = index(photo_dir, settings, encoder, store)
    assert (report.scanned, report.embedded, report.failed) == (10, 10, [])
    assert capfd.readouterr().err == ""  # called as a library, it draws no progress bar
    assert report.to_dict() == {
        "scanned": 10,
        "embedded": 10,
        "unchanged": 0,
        "moved": 0,
        "copied": 0,
        "removed": 0,
        "failed": [],
        "refused": [],
        "elapsed_s": report.elapsed_s,
        "text": report.text,  # the text stage's report: tests/indexer/test_text_stage.py
    }  # what --json prints
    assert (report.text["pending"], report.text["read"], report.text["failed"]) == (10, 10, 0)
    rows = rows_by_path(store)
    assert len(rows) == 10
    photo = rows[str(photo_dir / "photo0.png")]
    stat = (photo_dir / "photo0.png").stat()
    assert (photo["size"], photo["mtime_ns"], photo["width"], photo["height"]) == (
        stat.st_size,
        stat.st_mtime_ns,
        96,
        64,
    )
    assert len(photo["content_hash"]) == 32 and photo["indexed_at"] > 0


def test_files_that_cannot_be_decoded_are_skipped_with_reasons_and_the_rest_indexed(
    photo_dir, settings, encoder, store
):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "notes.png").write_text("not a picture")
    good = (photo_dir / "photo0.png").read_bytes()
    (photo_dir / "truncated.png").write_bytes(good[: len(good) // 3])
    write_photo(photo_dir / "huge.png", seed=99, size=(3000, 2000))
    (photo_dir / "readme.txt").write_text("ignored quietly")
    settings = settings.model_copy(update={"max_image_pixels": 5_000_000})
    report = index(photo_dir, settings, encoder, store)
    reasons = {Path(f["path"]).name: f["reason"] for f in report.failed}
    assert set(reasons) == {"empty.jpg", "notes.png", "truncated.png", "huge.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "pixels" in reasons["huge.png"]
    assert report.embedded == 10
    assert store.count() == 10


def test_a_second_run_on_an_unchanged_tree_embeds_nothing(photo_dir, settings, encoder, store):
    index(photo_dir, settings, encoder, store)
    before = rows_by_path(store)
    report = index(photo_dir, settings, encoder, store)
    assert (report.embedded, report.unchanged, report.removed) == (0, 10, 0)
    assert {p: r["indexed_at"] for p, r in rows_by_path(store).items()} == {
        p: r["indexed_at"] for p, r in before.items()
    }


def test_moved_changed_and_deleted_files(photo_dir, any_store, encoder):
    settings, store = any_store
    index(photo_dir, settings, encoder, store)
    old_vectors = {
        r["path"]: r["vector"]
        for r in store.get([r["id"] for r in rows_by_path(store).values()], with_vectors=True).values()
    }
    (photo_dir / "photo1.png").rename(photo_dir / "trip" / "renamed.png")
    (photo_dir / "photo2.png").unlink()
    write_photo(photo_dir / "photo3.png", seed=1234)  # new content, same path
    report = index(photo_dir, settings, encoder, store)
    assert (report.moved, report.copied, report.removed, report.embedded, report.unchanged) == (1, 0, 1, 1, 7)
    rows = rows_by_path(store)
    assert str(photo_dir / "photo1.png") not in rows and str(photo_dir / "photo2.png") not in rows
    moved = store.get([rows[str(photo_dir / "trip" / "renamed.png")]["id"]], with_vectors=True)
    assert np.allclose(next(iter(moved.values()))["vector"], old_vectors[str(photo_dir / "photo1.png")])
    changed = store.get([rows[str(photo_dir / "photo3.png")]["id"]], with_vectors=True)
    assert not np.allclose(next(iter(changed.values()))["vector"], old_vectors[str(photo_dir / "photo3.png")])
    # One row per file: a re-embedded path replaces its row (on a server, an insert would leave two).
    store.flush()
    all_rows = list(store.iter_metadata())
    assert len(rows) == len(all_rows) == store.count() == 9
    assert sorted(r["path"] for r in all_rows) == sorted(str(p) for p in photo_dir.rglob("*") if p.is_file())
    second = index(photo_dir, settings, encoder, store)
    assert (second.embedded, second.unchanged, second.removed, store.count()) == (0, 9, 0, 9)


def test_a_copy_of_an_indexed_file_reuses_its_vector_and_removes_nothing(photo_dir, any_store, encoder):
    settings, store = any_store
    index(photo_dir, settings, encoder, store)
    copy = photo_dir / "trip" / "copy-of-photo0.png"
    copy.write_bytes((photo_dir / "photo0.png").read_bytes())
    report = index(photo_dir, settings, encoder, store)
    assert (report.copied, report.moved, report.removed, report.embedded, report.unchanged) == (1, 0, 0, 0, 10)
    rows = rows_by_path(store)
    assert len(rows) == 11 and str(photo_dir / "photo0.png") in rows
    vectors = store.get([rows[str(copy)]["id"], rows[str(photo_dir / "photo0.png")]["id"]], with_vectors=True)
    original, copied = (np.asarray(v["vector"]) for v in vectors.values())
    assert np.allclose(original, copied)


def test_more_copies_than_a_batch_are_all_written_with_their_vectors(photo_dir, settings, encoder, store):
    settings = settings.model_copy(update={"batch_size": 2})  # five copies: two full batches and a rest
    index(photo_dir, settings, encoder, store)
    copies = photo_dir / "copies"
    for i in range(5):
        (copies / f"copy{i}.png").parent.mkdir(exist_ok=True)
        (copies / f"copy{i}.png").write_bytes((photo_dir / f"photo{i}.png").read_bytes())
    report = index(photo_dir, settings, encoder, store)
    assert (report.copied, report.embedded, report.unchanged) == (5, 0, 10)
    rows = rows_by_path(store)
    for i in range(5):
        pair = store.get(
            [rows[str(copies / f"copy{i}.png")]["id"], rows[str(photo_dir / f"photo{i}.png")]["id"]], with_vectors=True
        )
        copied, original = (np.asarray(v["vector"]) for v in pair.values())
        assert np.allclose(copied, original)


def test_a_profiled_run_says_where_its_time_went(photo_dir, settings, encoder, store):
    report = run_index([str(photo_dir)], settings, encoder, store, profile=True)
    stages = report.profile["stages"]
    assert list(stages) == ["read", "hash", "decode", "waiting for decode", "embed", "write"]
    assert all(stages[name]["seconds"] > 0 for name in ("read", "hash", "decode", "embed", "write")), stages
    assert report.profile["images"] == report.embedded == 10
    assert 0 < stages["embed"]["share_of_wall"] <= 1
    assert stages["embed"]["ms_per_image"] == pytest.approx(1000 * stages["embed"]["seconds"] / 10, abs=0.01)
    assert report.to_dict()["profile"] == report.profile
    assert "profile" not in run_index([str(photo_dir)], settings, encoder, store).to_dict()  # only when asked


def test_index_profile_prints_the_stages(photo_dir, imgsearch_bin, cli_env):
    result = run_cli(imgsearch_bin, cli_env, "index", str(photo_dir), "--profile")
    assert result.returncode == 0, result.stderr
    for stage in ("read", "hash", "decode", "waiting for decode", "embed", "write"):
        assert re.search(rf"^  {stage} +\d+\.\d\d s +\d+\.\d% of wall", result.stdout, re.M), result.stdout


def test_deleting_under_one_root_leaves_other_roots_alone(tmp_path, settings, encoder, store):
    a = [write_photo(tmp_path / "a" / f"{i}.png", seed=i) for i in range(3)]
    b = [write_photo(tmp_path / "b" / f"{i}.png", seed=10 + i) for i in range(3)]
    run_index([str(tmp_path / "a"), str(tmp_path / "b")], settings, encoder, store)
    a[0].unlink()
    report = run_index([str(tmp_path / "b")], settings, encoder, store)
    assert report.removed == 0
    assert str(a[0]) in rows_by_path(store)  # only a run over root a may sweep it
    report = run_index([str(tmp_path / "a")], settings, encoder, store)
    assert report.removed == 1 and store.count() == 5
    assert {str(p) for p in b} <= set(rows_by_path(store))  # root b's rows survived both runs


def test_an_indexed_image_queried_by_itself_comes_back_first_with_score_one(photo_dir, settings, encoder, store):
    index(photo_dir, settings, encoder, store)
    from imgsearch.media.images import decode_image

    path = photo_dir / "trip" / "photo7.jpg"
    query = encoder.embed_images([decode_image(path.read_bytes(), str(path), encoder.image_size, 10**8).image])
    hits = store.search(query, limit=3)[0]
    assert hits[0].row["path"] == str(path)
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[1].score < hits[0].score


def test_opening_a_collection_with_another_model_fails_with_a_clear_message(
    photo_dir, settings, encoder, store, tmp_path
):
    index(photo_dir, settings, encoder, store)
    other = SentenceTransformerEmbedder(str(build_local_clip(tmp_path / "other-model", "tiny", seed=1)), device="cpu")
    with pytest.raises(ModelMismatchError) as caught:
        run_index([str(photo_dir)], settings, other, store)
    message = str(caught.value)
    assert str(settings.model) in message and f"imgsearch migrate --model {other.name}" in message
    assert store.count() == 10  # nothing mixed in, nothing lost


def test_cli_prints_a_json_summary_and_exits_zero_despite_broken_files(photo_dir, imgsearch_bin, cli_env):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli(imgsearch_bin, cli_env, "index", str(photo_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("scanned", "embedded", "unchanged", "moved", "removed")} == {
        "scanned": 11,
        "embedded": 10,
        "unchanged": 0,
        "moved": 0,
        "removed": 0,
    }
    assert [f["path"] for f in summary["failed"]] == [str(photo_dir / "broken.jpg")]
    assert summary["failed"][0]["reason"] == "not a recognised image format"
    search = run_cli(imgsearch_bin, cli_env, "search", "--image", str(photo_dir / "photo4.png"), "-k", "2", "--json")
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)[0]["path"] == str(photo_dir / "photo4.png")


def test_cli_reports_a_missing_folder_without_a_traceback(imgsearch_bin, cli_env, tmp_path):
    result = run_cli(imgsearch_bin, cli_env, "index", str(tmp_path / "nope"))
    assert result.returncode != 0
    assert "no such file or directory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_one_clean_run(tmp_path, settings, imgsearch_bin, cli_env, tiny_model_dir):
    photos = tmp_path / "many"
    for i in range(400):
        write_photo(photos / f"{i // 100}" / f"p{i}.png", seed=i, size=(192, 128))
    env = {**cli_env, "IMGSEARCH_BATCH_SIZE": "4"}
    process = spawn(
        [imgsearch_bin, "index", str(photos), "--json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    observer = None
    try:
        deadline = time.monotonic() + 120
        written = 0
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            try:
                observer = observer or MilvusStore.from_settings(settings)
                written = observer.count() if observer.exists() else 0
            except Exception:
                continue
            if written >= 40:
                break
        assert process.poll() is None, "the run finished before it could be killed; make it slower"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert 0 < written < 400
    finally:
        if process.poll() is None:
            process.kill()
        if observer:
            observer.close()
        release_hosted(settings.milvus_uri)

    resumed = run_cli(imgsearch_bin, env, "index", str(photos), "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["embedded"] + summary["unchanged"] == 400 and summary["unchanged"] >= 40

    clean_env = {**env, "IMGSEARCH_MILVUS_URI": str(tmp_path / "clean" / "milvus.db")}
    clean = run_cli(imgsearch_bin, clean_env, "index", str(photos), "--json", timeout=300)
    assert clean.returncode == 0, clean.stderr

    def snapshot(uri):
        store = MilvusStore(uri, settings.collection)
        try:
            rows = list(store.iter_metadata())
            vectors = store.get([r["id"] for r in rows], with_vectors=True)
            return len(rows), {
                r["path"]: (r["id"], r["content_hash"], np.round(vectors[r["id"]]["vector"], 4).tolist()) for r in rows
            }
        finally:
            store.close()
            release_hosted(uri)

    resumed_count, resumed_rows = snapshot(settings.milvus_uri)
    clean_count, clean_rows = snapshot(clean_env["IMGSEARCH_MILVUS_URI"])
    assert resumed_count == clean_count == 400  # no duplicates, nothing missing
    assert resumed_rows.keys() == clean_rows.keys()
    for path, (row_id, digest, vector) in clean_rows.items():
        assert resumed_rows[path][:2] == (row_id, digest)
        assert np.allclose(resumed_rows[path][2], vector, atol=2e-3)


@pytest.mark.parametrize("ending", ["killed", "exits"])
def test_when_the_process_serving_the_data_directory_exits_another_takes_over(
    settings, store, encoder, tmp_path, ending
):
    store.ensure_collection(encoder.name, encoder.dim)
    store.close()
    release_hosted(settings.milvus_uri)  # this process stops serving; a child process becomes the host
    host = spawn(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from imgsearch.store import MilvusStore;"
                f"MilvusStore({settings.milvus_uri!r}, 'images'); print('ready', flush=True); sys.stdin.readline()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert host.stdout.readline().strip() == "ready"
        endpoint = Path(settings.milvus_uri) / "imgsearch-endpoint.json"
        assert json.loads(endpoint.read_text())["pid"] == host.pid
        client = MilvusStore.from_settings(settings)  # connects to the child's endpoint
        write_photo(tmp_path / "x" / "a.png", seed=1)
        run_index([str(tmp_path / "x")], settings, encoder, client)
        if ending == "killed":
            host.kill()
        else:
            host.stdin.close()  # it exits as an indexer does when done: it stops serving and removes its socket
        assert host.wait(timeout=30) is not None
        said = []
        pymilvus_said = logging.Handler(logging.WARNING)
        pymilvus_said.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("pymilvus").addHandler(pymilvus_said)  # pymilvus logs to its own handler, not the root's
        try:
            assert client.count() == 1  # reconnected: this process now serves the directory, nothing lost
        finally:
            logging.getLogger("pymilvus").removeHandler(pymilvus_said)
        assert json.loads(endpoint.read_text())["pid"] == os.getpid()
        assert said == []  # the store's own line says it reconnected; no pymilvus traceback per failed recovery
    finally:
        if host.poll() is None:
            host.kill()


# ── What the runner reports, in process: the counts a user reads ─────────────────────────────────────


def test_the_report_counts_touched_and_moved_files_and_the_time_taken(tmp_path, settings, encoder, store):
    root = tmp_path / "photos"
    for i in range(6):
        write_photo(root / f"p{i}.png", seed=i)
    heard = []
    started = time.monotonic()
    first = run_index(
        [str(root)], settings, encoder, store, on_progress=lambda done, total: heard.append((done, total))
    )
    assert 0 < first.elapsed_s <= time.monotonic() - started + 0.0005  # rounded to the millisecond
    assert heard[0] == (0, 6) and heard[-1] == (6, 6)
    for name in ("p0.png", "p1.png", "p2.png"):  # touched: same content, new mtime
        os.utime(root / name, ns=(1, 1))
    (root / "p3.png").rename(root / "moved3.png")
    (root / "p4.png").rename(root / "moved4.png")
    report = index(root, settings, encoder, store)
    assert (report.embedded, report.unchanged, report.moved, report.copied, report.removed) == (0, 4, 2, 0, 0)


def test_a_file_moved_back_during_the_run_is_counted_as_copied_and_kept(tmp_path, settings, encoder, store):
    root = tmp_path / "photos"
    write_photo(root / "a.png", seed=1)
    index(root, settings, encoder, store)
    (root / "a.png").rename(root / "b.png")

    def put_back(done, total):
        if total and done == total:  # after the rows are written, before the sweep
            shutil.copy(root / "b.png", root / "a.png")

    report = run_index([str(root)], settings, encoder, store, on_progress=put_back)
    assert (report.moved, report.copied, report.removed) == (0, 1, 0)
    assert set(rows_by_path(store)) == {str(root / "a.png"), str(root / "b.png")}


def test_an_indexed_copy_that_vanishes_mid_run_is_reported_not_written(tmp_path, settings, encoder, store, monkeypatch):
    root = tmp_path / "photos"
    write_photo(root / "a.png", seed=1)
    index(root, settings, encoder, store)
    shutil.copy(root / "a.png", root / "copy.png")
    monkeypatch.setattr(store, "get", lambda ids, with_vectors=False: {})  # another writer deleted the source row
    report = index(root, settings, encoder, store)
    assert report.failed == [{"path": str(root / "copy.png"), "reason": "indexed copy vanished during the run; re-run"}]
    assert set(rows_by_path(store)) == {str(root / "a.png")}


def test_an_emptied_share_below_a_root_is_named_with_its_count(tmp_path, settings, encoder, store):
    root = tmp_path / "photos"
    write_photo(root / "keep.png", seed=1)
    for i in range(3):
        write_photo(root / "nas" / "2024" / f"p{i}.png", seed=10 + i)
    index(root, settings, encoder, store)
    shutil.rmtree(root / "nas" / "2024")  # the mount point "nas" is left, empty
    report = index(root, settings, encoder, store)
    assert report.removed == 0 and len(report.refused) == 1
    assert report.refused[0].startswith(f"{root / 'nas'} has no image files now, but 3 are indexed under it")


def test_a_root_left_empty_is_named_with_its_count_and_other_roots_are_swept(tmp_path, settings, encoder, store):
    share, local = tmp_path / "share", tmp_path / "local"
    for i in range(2):
        write_photo(share / f"s{i}.png", seed=i)
    write_photo(local / "l0.png", seed=5)
    write_photo(local / "l1.png", seed=6)
    run_index([str(share), str(local)], settings, encoder, store)
    for photo in share.iterdir():
        photo.unlink()
    (local / "l1.png").unlink()
    report = run_index([str(share), str(local)], settings, encoder, store)
    assert report.refused == [
        f"{share} has no image files now, but 2 are indexed under it (an unmounted share looks "
        f"like this); they are kept. If they were removed on purpose, run again with --prune"
    ]
    assert report.removed == 1 and len(rows_by_path(store)) == 3  # the share's two are kept


def test_a_missing_root_is_named_with_how_many_images_it_holds(tmp_path, settings, encoder, store):
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(2):
        write_photo(first / f"f{i}.png", seed=i)
    for i in range(3):
        write_photo(second / f"s{i}.png", seed=10 + i)
    run_index([str(first), str(second)], settings, encoder, store)
    shutil.rmtree(second)
    with pytest.raises(RootNotFoundError) as missing:
        run_index([str(first), str(second)], settings, encoder, store)
    assert str(missing.value).startswith(f"{second}: no such file or directory; 3 images indexed under it are kept")
    assert len(rows_by_path(store)) == 5


def test_a_copy_keeps_the_photos_exif_date_and_a_plain_file_gets_its_own_time(tmp_path, settings, encoder, store):
    root = tmp_path / "photos"
    write_exif_photo(
        root / "camera.jpg",
        seed=1,
        taken="2019:06:01 09:30:00",
        make="FUJIFILM",
        model="X100V",
        gps=("N", (1.0, 0.0, 0.0), "E", (2.0, 0.0, 0.0)),
    )
    write_photo(root / "plain.png", seed=2)
    index(root, settings, encoder, store)
    shutil.copy(root / "camera.jpg", root / "camera copy.jpg")
    shutil.copy(root / "plain.png", root / "plain copy.png")
    os.utime(root / "plain copy.png", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    report = index(root, settings, encoder, store)
    assert report.copied == 2 and report.embedded == 0
    rows = rows_by_path(store)
    camera, copy = rows[str(root / "camera.jpg")], rows[str(root / "camera copy.jpg")]
    photo_facts = ("taken_at", "taken_at_source", "format", "camera_make", "camera_model", "gps")
    assert {k: copy[k] for k in photo_facts} == {k: camera[k] for k in photo_facts}
    assert (camera["taken_at_source"], camera["format"], camera["gps"]) == ("exif", "JPEG", "1.000000,2.000000")
    plain_copy = rows[str(root / "plain copy.png")]
    assert plain_copy["taken_at_source"] == "mtime" and plain_copy["taken_at"] == mtime_wall_clock(
        1_500_000_000 * 10**9
    )


def test_settings_name_the_model_that_is_loaded(settings, encoder, tiny_model_dir):
    from imgsearch.model.loading import load_embedder

    loaded = load_embedder(settings.model_copy(update={"model": str(tiny_model_dir / ".")}))
    assert loaded.name == str(tiny_model_dir.resolve()) == encoder.name  # a directory is recorded by its real path
    assert (loaded.dim, loaded.image_size) == (encoder.dim, encoder.image_size)
    assert np.allclose(loaded.fingerprint, encoder.fingerprint, atol=1e-5)
    assert np.allclose(loaded.embed_texts(["a cat"]).vectors, encoder.embed_texts(["a cat"]).vectors, atol=1e-5)


def test_the_indexer_records_its_weights_so_other_weights_are_refused(photo_dir, settings, encoder, store):
    index(photo_dir, settings, encoder, store)
    with pytest.raises(WeightsMismatchError):
        store.check_model(encoder.name, encoder.dim, [-v for v in encoder.fingerprint])


class OnCuda:
    """The tiny model as the indexer would see it on a GPU: the same vectors, a CUDA device (mocked: CI has no
    GPU), and every batch it is given recorded."""

    def __init__(self, encoder):
        self._encoder, self.device, self.batches = encoder, "cuda", []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def embed_images(self, images):
        self.batches.append(len(images))
        return self._encoder.embed_images(images)


def test_on_a_gpu_the_indexer_takes_big_batches_and_a_decode_thread_per_core(
    tmp_path, encoder, tiny_model_dir, monkeypatch
):
    """The CUDA path, run on the CPU: the batch and the decode threads are sized for a GPU unless set."""
    import imgsearch.indexer.runner as runner
    from imgsearch.settings import GPU_BATCH_SIZE, Settings

    photos = tmp_path / "photos"
    for i in range(300):
        write_photo(photos / f"p{i:03d}.png", seed=i, size=(24, 24))
    threads = []
    real_load_in_parallel = runner.load_in_parallel

    def recorded(entries, workers, window, load, clock):
        threads.append(workers)
        return real_load_in_parallel(entries, workers, window, load, clock)

    monkeypatch.setattr(runner, "load_in_parallel", recorded)
    settings = Settings(
        _env_file=None,
        milvus_uri=str(tmp_path / "data" / "milvus.db"),
        model=str(tiny_model_dir),
        device="cpu",
        precision="fp32",
        cache_dir=tmp_path / "cache",
    )
    on_cuda = OnCuda(encoder)
    store = MilvusStore.from_settings(settings)
    assert run_index([str(photos)], settings, on_cuda, store).embedded == 300
    assert on_cuda.batches == [GPU_BATCH_SIZE, 300 - GPU_BATCH_SIZE] and GPU_BATCH_SIZE == 256
    assert threads == [min(64, len(os.sched_getaffinity(0)))]
    store.close()

    # What the user set stays; on the CPU nothing changes.
    assert Settings(_env_file=None, batch_size=16, decode_workers=3).for_device("cuda:1").model_dump(
        include={"batch_size", "decode_workers"}
    ) == {"batch_size": 16, "decode_workers": 3}
    monkeypatch.setenv("IMGSEARCH_BATCH_SIZE", "64")
    assert Settings(_env_file=None).for_device("cuda").batch_size == 64
    monkeypatch.delenv("IMGSEARCH_BATCH_SIZE")
    cpu = Settings(_env_file=None)
    assert cpu.for_device("cpu") is cpu and (cpu.batch_size, cpu.decode_workers) == (32, 2)
