"""A real watcher (watchfiles: inotify, or polling) over real files in temporary folders, indexing into real Milvus
Lite with the tiny model: what a user notices when photos come, go, move, and arrive slowly."""

from __future__ import annotations

import io
import logging
import os
import shutil
import time

import numpy as np
import pytest

from imgsearch.indexer.runner import run_index
from tests.support.photos import write_photo
from tests.support.watching import indexed_paths, wait_for, watching

pytestmark = pytest.mark.slow


@pytest.fixture
def quick(settings):
    """Settings that settle in half a second, so each test takes seconds."""
    return settings.model_copy(update={"watch_settle_seconds": 0.5})


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    for i in range(3):
        write_photo(root / "2024" / f"photo{i}.jpg", seed=i)
    return root


def test_at_start_the_watcher_catches_up_with_what_changed_while_nothing_watched(library, quick, encoder, store):
    with watching([str(library)], quick, encoder, store) as (watcher, recorded):
        assert set(indexed_paths(store)) == {str(library / "2024" / f"photo{i}.jpg") for i in range(3)}
        assert recorded.of("catch-up")[0][1].embedded == 3
        assert watcher.status()["roots"][0]["mode"] == "events"


def test_a_photo_copied_in_becomes_searchable_in_seconds(library, quick, encoder, store, tmp_path):
    outside = write_photo(tmp_path / "camera" / "new.jpg", seed=42)
    with watching([str(library)], quick, encoder, store) as (watcher, recorded):
        copied_at = time.monotonic()
        shutil.copy(outside, library / "2024" / "new.jpg")
        wait_for(lambda: str(library / "2024" / "new.jpg") in indexed_paths(store), 15, "the copy to be indexed")
        assert time.monotonic() - copied_at < 5
        vector = encoder.embed_images([encoder_input(outside)])
        best = store.search(vector, limit=1)[0][0]  # found by a search with its own picture
        assert best.row["path"] == str(library / "2024" / "new.jpg")
        assert watcher.status()["roots"][0]["last_event"] is not None


def test_a_photo_written_slowly_in_pieces_is_indexed_once_whole_and_never_listed_as_failed(
    library, quick, encoder, store, tmp_path
):
    data = (write_photo(tmp_path / "camera" / "big.jpg", seed=7, size=(960, 640))).read_bytes()
    target = library / "2024" / "slow.jpg"
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        with open(target, "wb") as handle:
            for start in range(0, len(data), len(data) // 6 + 1):
                handle.write(data[start : start + len(data) // 6 + 1])
                handle.flush()
                time.sleep(0.3)  # shorter than the settle time: the copy is still under way
        row = wait_for(lambda: indexed_paths(store).get(str(target)), 15, "the slow file to be indexed")
        time.sleep(1.5)  # any second run would have come by now
        assert row["size"] == len(data)
        runs_with_it = [run for run, _report in recorded.of("changes") if str(target) in run.files]
        assert len(runs_with_it) == 1
        assert str(target) not in recorded.failed_paths()


def test_a_file_that_fails_to_decode_while_young_is_not_listed_and_is_indexed_once_complete(
    library, quick, encoder, store, tmp_path
):
    data = write_photo(tmp_path / "camera" / "paused.jpg", seed=8, size=(960, 640)).read_bytes()
    target = library / "2024" / "paused.jpg"
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        target.write_bytes(data[: len(data) // 2])  # the writer pauses longer than the settle time
        wait_for(lambda: any(str(target) in run.files for run, _ in recorded.of("changes")), 10, "a run over it")
        with open(target, "ab") as handle:
            handle.write(data[len(data) // 2 :])
        row = wait_for(lambda: indexed_paths(store).get(str(target)), 15, "the completed file to be indexed")
        assert row["size"] == len(data)
        assert str(target) not in recorded.failed_paths()


def test_a_rename_keeps_the_stored_vector_and_embeds_nothing(library, quick, encoder, store):
    old, new = library / "2024" / "photo0.jpg", library / "renamed" / "holiday.jpg"
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        before = store.get([indexed_paths(store)[str(old)]["id"]], with_vectors=True)
        vector_before = next(iter(before.values()))["vector"]
        new.parent.mkdir()
        os.rename(old, new)
        row = wait_for(lambda: indexed_paths(store).get(str(new)), 15, "the renamed file to be indexed")
        assert str(old) not in indexed_paths(store)
        wait_for(lambda: recorded.total("moved") == 1, 15, "the run that moved it to end")  # reported at its end
        assert recorded.total("embedded") == 0
        after = store.get([row["id"]], with_vectors=True)
        assert np.allclose(next(iter(after.values()))["vector"], vector_before)


def test_a_folder_renamed_inside_the_root_keeps_every_vector(library, quick, encoder, store):
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        os.rename(library / "2024", library / "holidays")
        wait_for(
            lambda: sorted(indexed_paths(store)) == [str(library / "holidays" / f"photo{i}.jpg") for i in range(3)],
            15,
            "the renamed folder's rows",
        )
        # The rows change inside the run; its report is recorded when the run ends.
        wait_for(lambda: recorded.total("moved") == 3, 15, "the run that moved them to end")
        assert recorded.total("embedded") == 0 and recorded.total("removed") == 0


def test_a_folder_moved_in_from_outside_is_indexed(library, quick, encoder, store, tmp_path):
    album = tmp_path / "elsewhere" / "album"
    for i in range(4):
        write_photo(album / f"a{i}.png", seed=20 + i)
    with watching([str(library)], quick, encoder, store):
        shutil.move(str(album), str(library / "album"))
        wait_for(
            lambda: sum(path.startswith(str(library / "album")) for path in indexed_paths(store)) == 4,
            15,
            "the moved-in folder to be indexed",
        )


def test_a_deleted_photo_loses_its_row(library, quick, encoder, store):
    gone = library / "2024" / "photo1.jpg"
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        gone.unlink()
        wait_for(lambda: str(gone) not in indexed_paths(store), 15, "the row to go")
        wait_for(lambda: recorded.total("removed") == 1, 15, "the run that removed it to end")  # reported at its end
        assert len(indexed_paths(store)) == 2


def test_a_vanished_root_loses_no_rows(library, quick, encoder, store, tmp_path):
    run_index([str(library)], quick, encoder, store)
    with watching([str(library)], quick, encoder, store) as (watcher, recorded):
        library.rename(tmp_path / "unmounted")  # the share goes away
        wait_for(lambda: watcher.status()["roots"][0]["last_event"], 10, "the event of its going")
        time.sleep(2)  # past the settle time: any sweep would have run
        watcher.reconcile_soon(str(library))  # a reconcile comes due while the root is gone
        time.sleep(1)
        assert len(indexed_paths(store)) == 3 and recorded.total("removed") == 0
        assert "missing" in watcher.status()["roots"][0]["problem"]


def test_a_root_whose_contents_vanish_like_an_unmounted_share_loses_no_rows(library, quick, encoder, store, tmp_path):
    with watching([str(library)], quick, encoder, store) as (watcher, recorded):
        shutil.move(str(library / "2024"), str(tmp_path / "away"))  # the root is left empty
        wait_for(lambda: watcher.status()["roots"][0]["last_event"], 10, "the event")
        time.sleep(2)
        watcher.reconcile_soon(str(library))
        wait_for(lambda: len(recorded.of("reconcile")) == 1, 10, "the reconcile")
        assert len(indexed_paths(store)) == 3 and recorded.total("removed", "reconcile") == 0
        assert "unmounted share" in watcher.status()["roots"][0]["problem"]


def test_a_burst_of_new_files_is_a_few_runs_not_one_per_file(library, quick, encoder, store, tmp_path):
    burst = 300
    with watching([str(library)], quick, encoder, store) as (_watcher, recorded):
        for i in range(burst):
            write_photo(library / "burst" / f"b{i:04d}.png", seed=1000 + i, size=(48, 32))
        wait_for(lambda: len(indexed_paths(store)) == 3 + burst, 120, "the burst to be indexed")
        wait_for(lambda: recorded.total("embedded") == burst, 30, "the burst's runs to end")  # reported at their end
        assert len(recorded.of("changes")) <= 5, [len(run.files) for run, _ in recorded.of("changes")]


def test_polling_forced_by_a_setting_still_picks_up_new_files(library, quick, encoder, store, tmp_path):
    polled = quick.model_copy(update={"watch_mode": "polling", "watch_poll_seconds": 0.3})
    with watching([str(library)], polled, encoder, store) as (watcher, _recorded):
        root = watcher.status()["roots"][0]
        assert root["mode"] == "polling" and "IMGSEARCH_WATCH_MODE" in root["reason"]
        write_photo(library / "2024" / "polled.jpg", seed=77)
        wait_for(lambda: str(library / "2024" / "polled.jpg") in indexed_paths(store), 15, "the polled file")


def test_out_of_inotify_watches_falls_back_to_polling_and_says_how_to_raise_the_limit(
    library, quick, encoder, store, caplog
):
    from watchfiles import watch as real_watch

    def limited(*args, **kwargs):
        if not kwargs.get("force_polling"):
            raise RuntimeError("OS file watch limit reached.")  # what notify says for inotify's ENOSPC
        return real_watch(*args, **kwargs)

    fast_poll = quick.model_copy(update={"watch_poll_seconds": 0.3})
    with caplog.at_level(logging.WARNING), watching([str(library)], fast_poll, encoder, store, limited) as (w, _):
        wait_for(lambda: w.status()["roots"][0]["mode"] == "polling", 10, "the fall-back")
        assert "fs.inotify.max_user_watches" in w.status()["roots"][0]["reason"]
        write_photo(library / "2024" / "late.jpg", seed=78)
        wait_for(lambda: str(library / "2024" / "late.jpg") in indexed_paths(store), 15, "the file, polled")
    assert sum("fs.inotify.max_user_watches" in r.getMessage() for r in caplog.records) <= 1


def encoder_input(path):
    from PIL import Image

    return Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
