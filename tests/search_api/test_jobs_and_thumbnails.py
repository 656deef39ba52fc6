"""The API's bounded resources: the indexing job queue and the thumbnail folder."""

from __future__ import annotations

import threading

import pytest

import imgsearch.search_api.services.jobs as jobs_module
from imgsearch.media.safe_files import UnsafeFileError
from imgsearch.search_api.services.jobs import JobManager, JobQueueFullError, allowed_paths
from imgsearch.search_api.services.thumbnails import ThumbnailCache
from tests.support.photos import write_photo


def test_the_job_queue_is_bounded_and_a_queued_duplicate_is_the_same_job(settings, monkeypatch):
    release = threading.Event()
    # Each job holds the worker until the test ends. Before, the made-up paths failed the root check at once, so
    # the first job was rarely seen running and the queue emptied while the test filled it (flaky under load).
    monkeypatch.setattr(jobs_module, "allowed_paths", lambda paths, roots: paths)
    monkeypatch.setattr(jobs_module, "run_index", lambda *args, **kwargs: release.wait())
    monkeypatch.setattr(jobs_module, "MAX_QUEUED_JOBS", 2)
    manager = JobManager(settings, encoder=None, store=None)
    try:
        running = manager.submit(["/a"])
        for _ in range(100):  # until the worker has taken it
            if manager.get(running.job_id).state == "running":
                break
            threading.Event().wait(0.02)
        first = manager.submit(["/b"])
        assert manager.submit(["/b"]).job_id == first.job_id  # asked twice, queued once
        manager.submit(["/c"])
        with pytest.raises(JobQueueFullError, match="2 jobs are already waiting"):
            manager.submit(["/d"])
    finally:
        release.set()
        manager.shutdown()


def test_nested_and_repeated_paths_are_merged(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    paths = allowed_paths(
        [str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path / "a" / ".." / "a")], [str(tmp_path)]
    )
    assert paths == [str(tmp_path / "a")]


def test_the_thumbnail_folder_stays_under_its_bound_dropping_the_least_recently_used(tmp_path):
    folder = tmp_path / "thumbs"
    photos = [write_photo(tmp_path / f"p{i}.png", seed=i, size=(600, 400)) for i in range(12)]
    one = len(ThumbnailCache(tmp_path / "probe", 10**8, 2**28, 2**30).get("x", "h", 256, photos[0].read_bytes))
    cache = ThumbnailCache(folder, 10**8, 2**28, max_bytes=int(one * 5.5))
    for i, photo in enumerate(photos[:4]):
        cache.get(f"id{i}", "hash", 256, photo.read_bytes)
    cache.get("id0", "hash", 256, lambda: pytest.fail("id0 is cached"))  # used again: now the most recent
    for i, photo in enumerate(photos[4:6], start=4):
        cache.get(f"id{i}", "hash", 256, photo.read_bytes)
    names = {p.name.split("-")[0] for p in folder.glob("*.jpg")}
    assert {"id0", "id4", "id5"} <= names and "id1" not in names  # the least recently used went first
    for i, photo in enumerate(photos[6:], start=6):
        cache.get(f"id{i}", "hash", 256, photo.read_bytes)
        assert sum(p.stat().st_size for p in folder.glob("*.jpg")) <= one * 5.5 * 1.2
    assert not list(folder.glob("*.tmp"))


def test_a_link_planted_in_the_thumbnail_folder_is_not_followed(tmp_path):
    folder = tmp_path / "thumbs"
    folder.mkdir(mode=0o700)
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (folder / "id0-hash-256.jpg").symlink_to(secret)  # where the thumbnail of id0 would be cached
    cache = ThumbnailCache(folder, 10**8, 2**28, 2**30)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        cache.get("id0", "hash", 256, lambda: pytest.fail("must not fall back to making one"))
