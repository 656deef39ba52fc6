"""The indexer's text stage (issue 36): a second stage after the embedding one, reading only what is unread,
resumed after a kill, kept by moves and copies, and given to collections that `imgsearch upgrade` brings to
schema 5 without embedding anything again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import imgsearch.store.catalogue as catalogue
import imgsearch.store.collection as collection_module
from imgsearch.indexer.runner import run_index
from imgsearch.indexer.upgrade import upgrade
from imgsearch.store import MilvusStore, release_hosted
from imgsearch.store import fields as fields_module
from imgsearch.store.fields import SCHEMA_VERSION
from tests.support.processes import run_cli, spawn
from tests.support.text_pictures import CORPUS, TextPicture, render, write_corpus


def rows_by_name(store) -> dict[str, dict]:
    return {os.path.basename(row["path"]).rsplit(".", 1)[0]: row for row in store.iter_metadata()}


def test_rows_are_written_and_searchable_before_the_text_stage_reads_them(tmp_path, settings, encoder, store):
    paths = write_corpus(tmp_path / "pictures", with_photos=2)
    seen_at_text_stage: list[dict] = []
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if calls and done == 0:  # the second stage begins
            seen_at_text_stage.extend(store.iter_metadata())
        calls.append((done, total))

    report = run_index([str(tmp_path / "pictures")], settings, encoder, store, on_progress=progress)
    assert report.embedded == len(paths)
    assert len(seen_at_text_stage) == len(paths)  # every row written before the first picture is read
    assert all(row["image_text"] == "" and row["text_read_from"] == "" for row in seen_at_text_stage)
    assert calls[-1] == (len(paths), len(paths))  # ...and the run returned when both stages were done
    rows = rows_by_name(store)
    assert "58213" in rows["receipt"]["image_text"] and "58213" in rows["receipt"]["text"]
    assert all(row["text_read_from"] == row["content_hash"] for row in rows.values())
    assert (report.text["pending"], report.text["read"]) == (len(paths), len(paths))


def test_moves_and_copies_keep_the_text_and_only_changed_content_is_read_again(tmp_path, settings, encoder, store):
    folder = tmp_path / "pictures"
    write_corpus(folder, with_photos=1)
    run_index([str(folder)], settings, encoder, store)
    before = rows_by_name(store)
    (folder / "moved").mkdir()
    shutil.move(folder / "receipt.png", folder / "moved" / "receipt_moved.png")
    shutil.copy(folder / "poster.png", folder / "poster_copy.png")
    render(TextPicture("x", ["Disk full 0xDEAD42"], size=(1200, 600))).save(folder / "error_dialog.png")
    report = run_index([str(folder)], settings, encoder, store)
    assert (report.moved, report.copied, report.embedded) == (1, 1, 1)
    assert report.text["pending"] == 1  # only the changed content is read again
    after = rows_by_name(store)
    assert after["receipt_moved"]["image_text"] == before["receipt"]["image_text"] != ""
    assert after["poster_copy"]["image_text"] == before["poster"]["image_text"] != ""
    assert "0xDEAD42" in after["error_dialog"]["image_text"] and "denied" not in after["error_dialog"]["image_text"]
    assert "receipt_moved" in after["receipt_moved"]["text"] and "58213" in after["receipt_moved"]["text"]


def test_with_ocr_off_no_text_is_read(tmp_path, settings, encoder, store):
    write_corpus(tmp_path / "pictures", with_photos=0)
    report = run_index([str(tmp_path / "pictures")], settings.model_copy(update={"ocr": "off"}), encoder, store)
    assert report.text is None and "text" not in report.to_dict()
    assert all(row["image_text"] == "" == row["text_read_from"] for row in store.iter_metadata())
    later = run_index([str(tmp_path / "pictures")], settings, encoder, store)  # turned on: read, not embedded
    assert later.embedded == 0 and later.text["read"] == len(CORPUS)


@pytest.mark.slow
def test_kill_9_during_the_text_stage_then_resume_reads_only_the_rest(
    tmp_path, settings, imgsearch_bin, cli_env, encoder
):
    folder = tmp_path / "pictures"
    for copy in range(4):  # 32 pictures with text, each its own content: long enough a text stage to kill
        (folder / str(copy)).mkdir(parents=True)
        for i, picture in enumerate(CORPUS):
            render(picture, seed=i, shift=copy).save(folder / str(copy) / f"{picture.name}.png")
    process = spawn([imgsearch_bin, "index", str(folder), "--json"], env=cli_env, stdout=subprocess.DEVNULL)
    observer, read = None, 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            try:
                observer = observer or MilvusStore.from_settings(settings)
                rows = list(observer.iter_rows(fields=["content_hash", "text_read_from"])) if observer.exists() else []
            except Exception:
                continue
            read = sum(row["text_read_from"] == row["content_hash"] for row in rows)
            if len(rows) == 32 and read >= 8:
                break
        assert process.poll() is None, "the run finished before it could be killed; make it slower"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert 8 <= read < 32
    finally:
        if process.poll() is None:
            process.kill()
        if observer:
            observer.close()
        release_hosted(settings.milvus_uri)
    resumed = run_cli(imgsearch_bin, cli_env, "index", str(folder), "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["embedded"] == 0 and summary["unchanged"] == 32  # the first stage was complete
    assert summary["text"]["pending"] == summary["text"]["read"] <= 32 - read  # what was written is not read again
    store = MilvusStore.from_settings(settings)
    try:
        rows = list(store.iter_metadata())
        assert all(row["text_read_from"] == row["content_hash"] for row in rows)
        assert sum("58213" in row["image_text"] for row in rows) == 4
    finally:
        store.close()


def test_upgrade_from_schema_4_adds_the_column_and_the_text_stage_reads_it_without_embedding(
    tmp_path, settings, encoder, store, monkeypatch
):
    write_corpus(tmp_path / "pictures", with_photos=1)
    with monkeypatch.context() as schema_4:  # this imgsearch as it was before the text in pictures
        columns = tuple(column for column in fields_module.COLUMNS if column.since <= 4)
        schema_4.setattr(fields_module, "COLUMNS", columns)
        schema_4.setattr(collection_module, "METADATA_FIELDS", [column.name for column in columns])
        schema_4.setattr(catalogue, "SCHEMA_VERSION", 4)
        first = run_index([str(tmp_path / "pictures")], settings.model_copy(update={"ocr": "off"}), encoder, store)
        assert store.schema_version() == 4 and "image_text" not in next(store.iter_metadata())
    report = upgrade(store, settings.max_file_bytes)
    assert (report.from_version, report.to_version, report.rows) == (4, SCHEMA_VERSION, first.embedded)
    assert all(row["image_text"] == "" and row["text_read_from"] == "" for row in store.iter_metadata())
    again = run_index([str(tmp_path / "pictures")], settings, encoder, store)
    assert again.embedded == 0 and again.text["read"] == first.embedded
    assert "GATEB17" in rows_by_name(store)["gate_sign"]["image_text"].replace(" ", "")
