"""`imgsearch migrate`: a collection moves to another model while the API answers every request.

Two random-weight models of different sizes stand in for an old and a new model: the tiny one (16 dimensions)
and the small one (512). A query embedded by one model cannot be searched in the other's collection at all, so a
mix-up during the switch shows as a failed request, not as a subtly wrong ranking.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from imgsearch.indexer import migration
from imgsearch.indexer.runner import run_index
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.search_api.main import create_app
from imgsearch.store import MilvusStore, release_hosted
from tests.support.models import build_local_clip
from tests.support.photos import write_photo
from tests.support.processes import cli_environment, run_cli, spawn, start_api, stop_process


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory) -> Path:
    return build_local_clip(tmp_path_factory.mktemp("models") / "small-clip", "small", seed=3)


@pytest.fixture(scope="module")
def small_encoder(small_model_dir) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(str(small_model_dir), device="cpu", batch_size=8)


def write_photos(root: Path, count: int) -> Path:
    for i in range(count):
        write_photo(root / f"{i // 50}" / f"p{i}.png", seed=i)
    return root


class Load:
    """A steady stream of text and image searches from a thread, every answer recorded."""

    def __init__(self, base: str, image: Path):
        self.base, self.image = base, image
        self.failures: list[str] = []
        self.answered = 0
        self.dims: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self._stop.is_set():
                for name, call in (
                    ("text", lambda: http.post("/search", json={"text": "a photo", "limit": 5})),
                    (
                        "image",
                        lambda: http.post(
                            "/search/image",
                            data={"limit": "5"},
                            files={"file": ("q.png", self.image.read_bytes(), "image/png")},
                        ),
                    ),
                ):
                    try:
                        response = call()
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                        continue
                    if response.status_code != 200 or not response.json()["results"]:
                        self.failures.append(f"{name}: {response.status_code} {response.text[:300]}")
                    else:
                        self.answered += 1


def wait_for_health(base: str, timeout_s: float = 120, **wanted) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{base}/health", timeout=10).json()
        if all(health.get(key) == value for key, value in wanted.items()):
            return health
        assert time.monotonic() < deadline, f"the API did not reach {wanted}: {health}"
        time.sleep(0.2)


@pytest.mark.slow
def test_migrate_and_roll_back_under_load_without_a_failed_request(
    tmp_path, imgsearch_bin, tiny_model_dir, small_model_dir
):
    photos = write_photos(tmp_path / "photos", 30)
    env = cli_environment(tmp_path / "data", tiny_model_dir)
    assert run_cli(imgsearch_bin, env, "index", str(photos)).returncode == 0
    process, base = start_api(imgsearch_bin, env)
    try:
        before = wait_for_health(base, vector_cache="fresh")
        assert (before["model"], before["dim"]) == (str(tiny_model_dir), 16)
        with Load(base, photos / "0" / "p7.png") as load:
            time.sleep(1)
            migrated = run_cli(imgsearch_bin, env, "migrate", "--model", str(small_model_dir), "--json")
            assert migrated.returncode == 0, migrated.stderr
            report = json.loads(migrated.stdout)
            assert report["switched"] and report["rows_after"] == 30 and report["build"]["embedded"] == 30
            answered_before_switch = load.answered
            after = wait_for_health(base, collection=report["new"])
            switched_at = load.answered
            time.sleep(2)
            assert load.answered > switched_at
        assert load.failures == [], load.failures[:5]
        assert answered_before_switch > 0
        assert (after["model"], after["dim"], after["count"]) == (str(small_model_dir), 512, 30)
        # Searches now use the new model: the query image itself comes back first.
        hits = httpx.post(
            f"{base}/search/image",
            data={"limit": "3"},
            timeout=30,
            files={"file": ("q.png", (photos / "0" / "p7.png").read_bytes(), "image/png")},
        ).json()
        assert hits["results"][0]["path"] == str(photos / "0" / "p7.png")

        with Load(base, photos / "0" / "p7.png") as load:
            back = run_cli(imgsearch_bin, env, "migrate", "--rollback")
            assert back.returncode == 0, back.stderr
            assert f"points to {before['collection']} again" in back.stdout
            restored = wait_for_health(base, collection=before["collection"])
            time.sleep(1)
        assert load.failures == [], load.failures[:5]
        assert (restored["model"], restored["dim"]) == (str(tiny_model_dir), 16)

        dropped = run_cli(imgsearch_bin, env, "drop", "--old", "--yes")
        assert dropped.returncode == 0, dropped.stderr
        assert f"dropped {report['new']}" in dropped.stdout
        assert httpx.post(f"{base}/search", json={"text": "a photo"}, timeout=30).status_code == 200
        no_way_back = run_cli(imgsearch_bin, env, "migrate", "--rollback")
        assert no_way_back.returncode == 1 and "no earlier collection" in no_way_back.stderr
    finally:
        stop_process(process)


@pytest.mark.slow
def test_a_killed_migration_resumes_and_the_old_collection_serves_meanwhile(
    tmp_path, imgsearch_bin, tiny_model_dir, small_model_dir
):
    photos = write_photos(tmp_path / "photos", 150)
    env = cli_environment(tmp_path / "data", tiny_model_dir)
    assert run_cli(imgsearch_bin, env, "index", str(photos), timeout=300).returncode == 0
    uri = env["IMGSEARCH_MILVUS_URI"]
    names = MilvusStore(uri, "images")
    old = names.target()
    new = migration.new_collection_name(names, str(small_model_dir))
    slow_env = {**env, "IMGSEARCH_BATCH_SIZE": "2"}
    process = spawn(
        [imgsearch_bin, "migrate", "--model", str(small_model_dir)],
        env=slow_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    written = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None and written < 20:
            time.sleep(0.2)
            try:
                written = MilvusStore(uri, new).count()
            except Exception:
                continue
        assert process.poll() is None, "the migration finished before it could be killed; make it slower"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert 0 < written < 150
        assert names.target() == old  # killed before the switch: the name still means the old collection
    finally:
        stop_process(process)
        names.close()
        release_hosted(uri)

    searched = run_cli(imgsearch_bin, env, "search", "--image", str(photos / "0" / "p3.png"), "-k", "1", "--json")
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout)[0]["path"] == str(photos / "0" / "p3.png")

    resumed = run_cli(imgsearch_bin, env, "migrate", "--model", str(small_model_dir), "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed"] and report["new"] == new and report["switched"]
    assert report["build"]["unchanged"] >= written - 2  # rows of the last batch may not have landed
    assert report["build"]["embedded"] + report["build"]["unchanged"] == 150 and report["rows_after"] == 150
    # The CLI follows the collection's model when none is given: search with IMGSEARCH_MODEL unset.
    unset = {key: value for key, value in env.items() if key != "IMGSEARCH_MODEL"}
    searched = run_cli(imgsearch_bin, unset, "search", "--image", str(photos / "1" / "p60.png"), "-k", "1", "--json")
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout)[0]["path"] == str(photos / "1" / "p60.png")


def test_the_api_keeps_serving_when_the_new_collections_model_cannot_load(settings, encoder, small_encoder, photo_dir):
    names = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, names)
    with TestClient(create_app(settings, encoder=encoder)) as client:
        client.app.state.switcher.poll_s = 0.1
        old = client.get("/health").json()["collection"]
        report = migration.build(settings, small_encoder, names)
        names.set_properties(report.new, {"imgsearch.model": str(settings.cache_dir / "no-such-model")})
        migration.switch(names, report)
        deadline = time.monotonic() + 30
        while "cannot serve" not in (health := client.get("/health").json())["switch"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["collection"] == old and report.new in health["switch"]
        response = client.post("/search", json={"text": "a photo", "limit": 3})
        assert response.status_code == 200 and len(response.json()["results"]) == 3
    names.close()


def test_migrate_refuses_the_model_it_already_has_and_a_rollback_with_nowhere_to_go(settings, encoder, photo_dir):
    names = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, names)
    with pytest.raises(migration.MigrationError, match="already embedded by"):
        migration.build(settings, encoder, names)
    with pytest.raises(migration.MigrationError, match="no earlier collection"):
        migration.rollback(names)
    assert names.others() == []
    names.close()


def test_drop_old_keeps_what_the_name_points_to_and_drop_takes_everything(settings, encoder, small_encoder, photo_dir):
    names = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, names)
    old = names.target()
    report = migration.build(settings, small_encoder, names)
    migration.switch(names, report)
    assert names.others() == [old]
    assert [(o.name, o.state, o.rows) for o in migration.other_collections(names)] == [(old, "previous", 10)]
    with pytest.raises(migration.MigrationError, match="points to .* now, not to .*nothing was switched"):
        migration.switch(names, report)  # a second switch from a build that began before the first
    with pytest.raises(ValueError):
        names.drop_other(report.new)  # never what the name points to
    migration.drop_others(names, [old])
    assert names.others() == [] and names.target() == report.new and names.count() == 10

    report = migration.build(settings, encoder, names)  # and back to the first model: a third collection
    migration.switch(names, report)
    assert names.others() == [report.old]
    names.drop()
    assert names.target() is None and names.others() == []
    names.close()


def test_a_migration_that_would_leave_images_behind_does_not_switch_unless_allowed(
    settings, encoder, small_encoder, tmp_path, imgsearch_bin, small_model_dir
):
    """An unmounted share reads as an empty folder: switching then would leave its images only in the old
    collection, which `drop --old` deletes."""
    photos = write_photos(tmp_path / "share", 6)
    names = MilvusStore.from_settings(settings)
    run_index([str(photos)], settings, encoder, names)
    old = names.target()
    gone = sorted((photos / "0").glob("p[01].png"))
    for path in gone:
        path.unlink()
    report = migration.build(settings, small_encoder, names)
    assert report.not_carried == [str(path) for path in gone]
    with pytest.raises(
        migration.MigrationError, match="2 images of .* are not in .*nothing was switched.*--allow-missing"
    ):
        migration.switch(names, report)
    assert names.target() == old and names.count() == 6
    names.close()

    env = cli_environment(Path(settings.milvus_uri).parent, small_model_dir)
    refused = run_cli(imgsearch_bin, env, "migrate", "--model", str(small_model_dir))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--allow-missing" in refused.stderr and str(gone[0]) in refused.stderr
    switched = run_cli(imgsearch_bin, env, "migrate", "--model", str(small_model_dir), "--allow-missing")
    assert switched.returncode == 0, switched.stderr
    assert "now points to" in switched.stdout
    names = MilvusStore.from_settings(settings)
    assert names.target() == report.new and names.count() == 4 and names.others() == [old]
    names.close()


def test_label_sets_saved_or_removed_during_a_migration_follow_the_switch_and_the_rollback(
    settings, encoder, small_encoder, photo_dir
):
    names = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, names)
    names.put_label_set("kept", "kept-set")
    names.put_label_set("removed", "removed-set")
    report = migration.build(settings, small_encoder, names)
    names.put_label_set("added", "added-set")  # while the new collection waits to be switched to
    names.put_label_set("removed", "")
    migration.switch(names, report)
    assert names.label_sets() == {"added": "added-set", "kept": "kept-set"}
    names.put_label_set("after", "after-set")  # saved on the new model's collection, then rolled back
    migration.rollback(names)
    assert names.label_sets() == {"added": "added-set", "after": "after-set", "kept": "kept-set"}
    names.close()


def test_a_collection_imgsearch_did_not_make_is_refused_in_one_line(settings, imgsearch_bin, cli_env, photo_dir):
    names = MilvusStore.from_settings(settings)
    names._call(lambda client: client.create_collection(settings.collection, dimension=16))  # a plain pymilvus one
    names.close()
    release_hosted(settings.milvus_uri)
    del cli_env["IMGSEARCH_MODEL"]  # so the command takes the model the collection records: it records none
    indexed = run_cli(imgsearch_bin, cli_env, "index", str(photo_dir))
    assert indexed.returncode != 0
    assert "indexed with model '(not an imgsearch collection)'" in indexed.stderr  # not a failed load of that name
    assert "Traceback" not in indexed.stderr
