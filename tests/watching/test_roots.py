"""Which roots a watcher watches, and how: without starting it."""

from __future__ import annotations

from imgsearch.watching.watcher import Watcher


def test_a_root_inside_another_is_watched_through_it_and_links_are_resolved(settings, tmp_path):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    watcher = Watcher([str(tmp_path / "photos" / "2024"), str(tmp_path / "link")], settings, lambda run, work: None)
    assert [root["path"] for root in watcher.status()["roots"]] == [str(tmp_path / "photos")]


def test_polling_forced_by_the_setting_says_so_and_events_forced_never_poll(settings, tmp_path):
    polled = Watcher([str(tmp_path)], settings.model_copy(update={"watch_mode": "polling"}), lambda r, w: None)
    root = polled.status()["roots"][0]
    assert root["mode"] == "polling" and root["reason"] == "IMGSEARCH_WATCH_MODE=polling"
    evented = Watcher([str(tmp_path)], settings.model_copy(update={"watch_mode": "events"}), lambda r, w: None)
    assert evented.status()["roots"][0]["mode"] == "events"
    assert polled.status()["rescan_minutes"] == 60 and polled.status()["pending"] == 0
