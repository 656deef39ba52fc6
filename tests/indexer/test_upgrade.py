"""`imgsearch upgrade` against a collection as schema 1 wrote it: every row and vector kept, nothing
embedded again, new columns filled from the files, and a crash at any step leaves a collection that serves."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

import numpy as np
import pytest

from imgsearch.errors import CollectionNotFoundError, SchemaOutdatedError, SchemaTooNewError
from imgsearch.indexer.runner import run_index
from imgsearch.indexer.upgrade import upgrade
from imgsearch.store import MilvusStore, release_hosted
from imgsearch.store.fields import SCHEMA_VERSION, SearchFilter, columns_of, mtime_wall_clock, wall_clock_seconds
from imgsearch.store.filters import ImageFilter
from tests.support.legacy_v1 import index_v1
from tests.support.milvus import MILVUS_SERVERS, unique_collection
from tests.support.photos import write_exif_photo, write_photo
from tests.support.processes import run_cli


@pytest.fixture
def old_library(tmp_path, store, encoder):
    return write_old_library(tmp_path, store, encoder)


def write_old_library(tmp_path, store, encoder):
    """A schema-1 collection of five photos: two with EXIF, one PNG, one deleted since it was indexed, and one
    whose content changed since (its new EXIF is not what was indexed, so it is not read)."""
    root = tmp_path / "photos"
    paths = [
        write_exif_photo(
            root / "beach.jpg",
            seed=1,
            taken="2019:06:01 09:30:00",
            make="FUJIFILM",
            model="X100V",
            gps=("S", (33.0, 51.0, 36.0), "E", (151.0, 12.0, 36.0)),
        ),
        write_exif_photo(root / "city.jpg", seed=2, taken="2021:12:24 18:00:00", make="Apple", model="iPhone 12"),
        write_photo(root / "scan.png", seed=3),
        write_photo(root / "gone.png", seed=4),
        write_exif_photo(root / "edited.jpg", seed=5),
    ]
    os.utime(paths[2], ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    rows = index_v1(store, encoder, paths, [str(root)])
    paths[3].unlink()
    write_exif_photo(root / "edited.jpg", seed=6, taken="2001:01:01 00:00:00", model="Edited")
    return root, {row["path"]: row for row in rows}


def dies_at(store, monkeypatch, operation: str, nth: int = 1) -> None:
    """The ``nth`` Milvus call of the store that does ``operation`` raises, as if the process were killed there."""
    real_call, seen = store._call, []

    def call(run):
        if operation in run.__code__.co_names:
            seen.append(run)
            if len(seen) == nth:
                raise KeyboardInterrupt
        return real_call(run)

    monkeypatch.setattr(store, "_call", call)


def by_path(store) -> dict[str, dict]:
    return {row["path"]: row for row in store.iter_rows(with_vectors=True)}


def test_index_refuses_an_old_schema_and_names_the_command(old_library, settings, encoder, store):
    root, _rows = old_library
    with pytest.raises(SchemaOutdatedError, match="Run `imgsearch upgrade` once"):
        run_index([str(root)], settings, encoder, store)
    assert store.schema_version() == 1 and store.count() == 5  # nothing touched


def test_upgrade_keeps_every_vector_and_fills_the_new_columns_from_the_files(old_library, settings, store):
    upgrades_and_keeps_everything(old_library, settings, store)


@pytest.mark.parametrize("kind", MILVUS_SERVERS)
def test_upgrade_on_a_milvus_server_keeps_every_vector_and_switches_the_name(
    kind, milvus_servers, settings, tmp_path, encoder
):
    settings = settings.model_copy(update={"milvus_uri": milvus_servers(kind), "collection": unique_collection()})
    store = MilvusStore.from_settings(settings)
    try:
        upgrades_and_keeps_everything(write_old_library(tmp_path, store, encoder), settings, store)
        store.drop()
        assert not any(name.startswith(settings.collection) for name in store._call(lambda c: c.list_collections()))
    finally:
        if store.exists():
            store.drop()
        store.close()


def upgrades_and_keeps_everything(old_library, settings, store):
    root, before = old_library
    heard = []
    started = time.monotonic()
    report = upgrade(store, settings.max_file_bytes, batch_size=3, on_progress=lambda *step: heard.append(step))
    assert (report.from_version, report.to_version, report.rows) == (1, SCHEMA_VERSION, 5)
    assert (report.dated_by_exif, report.files_unreadable) == (2, 2)
    assert 0 < report.elapsed_s <= time.monotonic() - started + 0.0005
    assert heard == [(0, 5), (3, 5), (5, 5)]  # two batches
    assert store.schema_version() == SCHEMA_VERSION and store.target() == f"{store.collection}_v{SCHEMA_VERSION}"
    after = by_path(store)
    assert set(after) == set(before)
    for path, old in before.items():
        new = after[path]
        assert np.array_equal(np.asarray(new["vector"], np.float32), np.asarray(old["vector"], np.float32))
        assert {k: new[k] for k in old if k != "vector"} == {k: v for k, v in old.items() if k != "vector"}
    beach = after[str(root / "beach.jpg")]
    assert (beach["taken_at_source"], beach["format"], beach["camera_make"], beach["camera_model"]) == (
        "exif",
        "JPEG",
        "FUJIFILM",
        "X100V",
    )
    assert beach["taken_at"] == wall_clock_seconds(datetime(2019, 6, 1, 9, 30))
    assert beach["gps"] == "-33.860000,151.210000"
    scan = after[str(root / "scan.png")]
    assert (scan["taken_at_source"], scan["format"], scan["camera_model"]) == ("mtime", "PNG", "")
    gone = after[str(root / "gone.png")]
    assert (gone["taken_at_source"], gone["format"]) == ("mtime", "")  # dated by the time it had when indexed
    edited = after[str(root / "edited.jpg")]
    assert (edited["taken_at_source"], edited["camera_model"], edited["taken_at"]) == (
        "mtime",
        "",
        mtime_wall_clock(before[str(root / "edited.jpg")]["mtime_ns"]),
    )
    # The old collection is gone; the configured name finds the new one, and its filters work.
    assert [name for name in store._call(lambda c: c.list_collections()) if name.startswith(store.collection)] == [
        f"{store.collection}_v{SCHEMA_VERSION}"
    ]
    query = np.asarray(before[str(root / "city.jpg")]["vector"], np.float32)[None, :]
    before_2020 = ImageFilter.from_request(SearchFilter(taken_before="2020-01-01"))
    assert [hit.row["path"] for hit in store.search(query, 10, 0, before_2020)[0]] == [str(root / "beach.jpg")]
    in_2021 = ImageFilter.from_request(SearchFilter(taken_after="2021-01-01", cameras=["iPhone 12"]))
    assert [hit.row["path"] for hit in store.search(query, 10, 0, in_2021)[0]] == [str(root / "city.jpg")]


def test_upgrade_is_a_no_op_on_a_current_collection(store, settings, encoder, photo_dir):
    run_index([str(photo_dir)], settings, encoder, store)
    report = upgrade(store, settings.max_file_bytes)
    assert report.from_version == report.to_version == SCHEMA_VERSION and report.rows == 0
    assert store.count() == 10


def test_a_crash_mid_copy_leaves_the_old_collection_serving_and_a_rerun_completes(
    old_library, settings, store, monkeypatch
):
    _root, before = old_library
    dies_at(store, monkeypatch, "upsert", nth=2)  # the second batch
    with pytest.raises(KeyboardInterrupt):
        upgrade(store, settings.max_file_bytes, batch_size=2)
    monkeypatch.undo()
    assert store.schema_version() == 1 and store.count() == 5 and store.target() == store.collection
    query = np.asarray(next(iter(before.values()))["vector"], np.float32)[None, :]
    assert store.search(query, 1)[0][0].row["path"] == next(iter(before))  # still serving

    report = upgrade(store, settings.max_file_bytes, batch_size=2)
    assert report.rows == 5 and store.schema_version() == SCHEMA_VERSION and len(by_path(store)) == 5


def test_a_crash_between_dropping_the_old_and_naming_the_new_is_finished_by_the_next_command(
    old_library, settings, encoder, store, monkeypatch
):
    root, _before = old_library
    dies_at(store, monkeypatch, "create_alias")
    with pytest.raises(KeyboardInterrupt):
        upgrade(store, settings.max_file_bytes)
    monkeypatch.undo()
    assert not store.exists()  # the window: the name points nowhere, the copy is complete beside it
    report = upgrade(store, settings.max_file_bytes)  # upgrade again, or any command that opens the collection
    assert (report.from_version, report.to_version, report.rows) == (1, SCHEMA_VERSION, 5)
    report = run_index([str(root)], settings, encoder, store)
    assert store.schema_version() == SCHEMA_VERSION and store.count() == 4 and report.embedded == 1  # edited.jpg
    assert report.removed == 1  # gone.png, really deleted


def test_a_copy_cut_short_is_not_mistaken_for_a_finished_one(old_library, settings, store):
    physical = store.physical_name(SCHEMA_VERSION)
    store.create_physical(physical, store.model_info()[1], {"imgsearch.upgrade": "copying"})
    assert not store.finish_interrupted_switch()
    report = upgrade(store, settings.max_file_bytes)
    assert report.rows == 5 and store.count() == 5 and store.schema_version() == SCHEMA_VERSION


# ── As a user runs it ─────────────────────────────────────────────────────────────────────────────────


def test_the_cli_refuses_an_old_schema_then_upgrades_it_without_the_model(
    old_library, settings, store, imgsearch_bin, cli_env
):
    root, _before = old_library
    release_hosted(settings.milvus_uri)  # let the commands below host the data directory
    for command in (["index", str(root)], ["serve", "--port", "1"]):
        refused = run_cli(imgsearch_bin, cli_env, *command)
        assert refused.returncode == 1 and "Run `imgsearch upgrade` once" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    no_model = {**cli_env, "IMGSEARCH_MODEL": "/nonexistent/model"}  # nothing is embedded: no model is loaded
    upgraded = run_cli(imgsearch_bin, no_model, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith(
        f"upgraded collection '{settings.collection}' from schema version 1 to "
        f"{SCHEMA_VERSION}: 5 rows copied, none embedded again; 2 dated by EXIF, "
        f"2 files gone or changed"
    )
    again = run_cli(imgsearch_bin, no_model, "upgrade", "--json")
    assert json.loads(again.stdout) == {
        "from_version": SCHEMA_VERSION,
        "to_version": SCHEMA_VERSION,
        "rows": 0,
        "dated_by_exif": 0,
        "files_unreadable": 0,
        "elapsed_s": 0.0,
    }
    found = run_cli(imgsearch_bin, cli_env, "search", "x", "--after", "2019-01-01", "--before", "2020-01-01", "--json")
    assert found.returncode == 0, found.stderr
    assert [(hit["path"], hit["taken_at"], hit["camera_model"]) for hit in json.loads(found.stdout)] == [
        (str(root / "beach.jpg"), "2019-06-01T09:30:00", "X100V")
    ]
    by_camera = run_cli(
        imgsearch_bin, cli_env, "search", "x", "--camera", "iPhone 12", "--camera", "X100V", "--newest", "--json"
    )
    assert [hit["path"] for hit in json.loads(by_camera.stdout)] == [str(root / "city.jpg"), str(root / "beach.jpg")]
    bad = run_cli(imgsearch_bin, cli_env, "search", "x", "--after", "last tuesday")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "imgsearch search: error: taken_after: Input should be a valid datetime or date, invalid character in year"
    )  # one line, not pydantic's block with a link
    empty = run_cli(imgsearch_bin, cli_env, "search", "x", "--after", "2030-01-01")
    assert empty.returncode == 0 and empty.stdout.strip() == (
        "no results match the filters (--after, --before, --format, --camera, --path-prefix, --tag, --all-tags, "
        "--has-text)"
    )


def test_a_rerun_after_the_copy_finished_does_not_copy_again(old_library, settings, store, monkeypatch):
    dies_at(store, monkeypatch, "drop_collection")
    with pytest.raises(KeyboardInterrupt):
        upgrade(store, settings.max_file_bytes)
    monkeypatch.undo()
    assert store.schema_version() == 1 and store.count() == 5  # the old one still serves
    heard = []
    report = upgrade(store, settings.max_file_bytes, on_progress=lambda *step: heard.append(step))
    assert heard == [] and (report.from_version, report.rows) == (1, 5)  # the finished copy is used as it is
    assert store.schema_version() == SCHEMA_VERSION and len(by_path(store)) == 5


def test_the_next_upgrade_switches_the_alias_and_drops_the_version_before(
    store, settings, encoder, photo_dir, monkeypatch
):
    """Every upgrade after this one starts from an aliased collection; pretend the next schema is here."""
    run_index([str(photo_dir)], settings, encoder, store)
    before = by_path(store)
    import imgsearch.indexer.upgrade as upgrade_module
    import imgsearch.store.catalogue as catalogue

    for module in (catalogue, upgrade_module):
        monkeypatch.setattr(module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    report = upgrade(store, settings.max_file_bytes)
    assert (report.from_version, report.to_version, report.rows) == (SCHEMA_VERSION, SCHEMA_VERSION + 1, 10)
    assert store.target() == f"{store.collection}_v{SCHEMA_VERSION + 1}"
    assert store._call(lambda c: c.list_collections()) == [f"{store.collection}_v{SCHEMA_VERSION + 1}"]
    after = by_path(store)
    assert {p: np.asarray(r["vector"], np.float32).tobytes() for p, r in after.items()} == {
        p: np.asarray(r["vector"], np.float32).tobytes() for p, r in before.items()
    }


def test_an_upgrade_needs_a_collection_and_refuses_a_newer_one(store, settings):
    with pytest.raises(CollectionNotFoundError, match=store.collection):
        upgrade(store, settings.max_file_bytes)
    store.ensure_collection("model-a", 8)
    store._call(lambda c: c.alter_collection_properties(store.collection, properties={"imgsearch.schema": "9"}))
    with pytest.raises(
        SchemaTooNewError,
        match=f"Collection '{store.collection}' has schema version 9, written by a "
        f"newer imgsearch than this one \\(version {SCHEMA_VERSION}\\)",
    ):
        upgrade(store, settings.max_file_bytes)


def test_dropping_removes_the_name_and_the_collection_behind_it(store, settings, old_library):
    store.drop()  # schema 1: the collection itself
    assert store._call(lambda c: c.list_collections()) == [] and not store.exists()
    store.ensure_collection("model-a", 8)
    store.drop()  # schema 2: the alias and the versioned collection
    assert store._call(lambda c: c.list_collections()) == [] and not store.exists()
    store.ensure_collection("model-a", 8)  # the name can be used again
    assert store.exists()


def test_each_schema_version_lists_the_columns_it_holds():
    assert columns_of(1) == ["id", "path", "size", "mtime_ns", "content_hash", "width", "height", "indexed_at"]
    assert columns_of(2)[:8] == columns_of(1) and "taken_at" in columns_of(2) and "camera_model" in columns_of(2)
