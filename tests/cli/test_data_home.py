"""A newcomer's first hour: the index lives in the user's data folder whatever folder a command starts in, a first
run on a fresh machine waits for no export, and an index left in ./data by an older version is pointed out."""

from __future__ import annotations

import json
import os

from tests.support.photos import write_photo_set
from tests.support.processes import run_cli


def fresh_user(tmp_path, model_dir) -> dict[str, str]:
    """A user with a new HOME and empty data and cache folders, who only says which model to use (no hub here)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMGSEARCH_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        IMGSEARCH_MODEL=str(model_dir),
    )
    return env


def test_the_index_lives_in_the_data_home_and_is_found_from_any_folder(imgsearch_bin, tmp_path, tiny_model_dir):
    env = fresh_user(tmp_path, tiny_model_dir)
    photos = write_photo_set(tmp_path / "photos")
    started_in, elsewhere = tmp_path / "started-here", tmp_path / "elsewhere"
    started_in.mkdir()
    elsewhere.mkdir()
    os.chdir(started_in)
    indexed = run_cli(imgsearch_bin, env, "index", str(photos))
    assert indexed.returncode == 0, indexed.stderr
    assert list(started_in.iterdir()) == []  # nothing written to the current folder
    assert (tmp_path / "xdg-data" / "imgsearch" / "milvus.db").is_dir()
    assert (tmp_path / "xdg-cache" / "imgsearch").is_dir()  # auto's measured choice

    os.chdir(elsewhere)
    found = run_cli(imgsearch_bin, env, "search", "a photo", "--json", "-k", "3")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 3
    assert list(elsewhere.iterdir()) == []


def test_a_first_run_on_a_fresh_machine_builds_no_exported_graph(imgsearch_bin, tmp_path, tiny_model_dir):
    env = fresh_user(tmp_path, tiny_model_dir)  # precision and backend at their defaults: auto
    first = run_cli(imgsearch_bin, env, "index", str(write_photo_set(tmp_path / "photos")))
    assert first.returncode == 0, first.stderr
    assert "embedded 10" in first.stdout and "precision auto -> " in first.stderr
    # onnx and openvino's image towers wait for a large job or `imgsearch tune`; the text tower, seconds to export
    # and time, is measured at the end (imgsearch/model/text_tower.py)
    built = [line for line in first.stderr.splitlines() if "building the" in line]
    assert all("text graph" in line for line in built), built
    graphs = [folder.name for folder in (tmp_path / "xdg-cache" / "imgsearch").glob("graphs/*")]
    assert all(name.startswith("text-") for name in graphs), graphs


def test_an_index_left_in_dot_data_by_an_older_version_is_pointed_out(imgsearch_bin, tmp_path, tiny_model_dir):
    env = fresh_user(tmp_path, tiny_model_dir)
    old = tmp_path / "old-user"
    (old / "data" / "milvus.db").mkdir(parents=True)
    os.chdir(old)
    result = run_cli(imgsearch_bin, env, "search", "a photo")
    notice = [line for line in result.stderr.splitlines() if "older version" in line]
    assert len(notice) == 1
    assert f"IMGSEARCH_MILVUS_URI={old / 'data' / 'milvus.db'}" in notice[0]
    assert str(tmp_path / "xdg-data" / "imgsearch") in notice[0]
    quiet = run_cli(imgsearch_bin, {**env, "IMGSEARCH_MILVUS_URI": str(old / "data" / "milvus.db")}, "search", "x")
    assert "older version" not in quiet.stderr  # a user who chose the old place is not told again
