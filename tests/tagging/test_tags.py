"""Zero-shot tags: label files, the tags they give (checked against an independent computation from the stored
vectors), filters and facets over them, the export against brute force, tags for images indexed later, the API
and the CLI."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgsearch.indexer.runner import run_index
from imgsearch.media.searchable_text import parts as text_parts
from imgsearch.search_api.main import create_app
from imgsearch.store.fields import SearchFilter
from imgsearch.store.filters import ImageFilter
from imgsearch.tagging.jobs import Export, run_tagging, save_label_set
from imgsearch.tagging.labels import (
    MAX_LABELS,
    LabelSetError,
    TopImages,
    decide,
    load_label_file,
    make_label_set,
)
from tests.support.api import CopyAnsweringClient, milvus_search_forbidden
from tests.support.photos import write_photo
from tests.support.processes import run_cli

LABELS = ["dog", "cat", "beach", "red bicycle", "snow"]


# ── Label files ─────────────────────────────────────────────────────────────────────────────────────────


def test_a_plain_list_of_lines_is_a_label_set(tmp_path):
    path = tmp_path / "my animals.txt"
    path.write_text("# pets\ndog\n\n  cat  \nred   bicycle\n", encoding="utf-8")
    label_set = load_label_file(path)
    assert label_set.name == "my-animals" and label_set.names == ["dog", "cat", "red bicycle"]
    assert label_set.prompts() == [["a photo of a dog."], ["a photo of a cat."], ["a photo of a red bicycle."]]
    assert (label_set.top, label_set.mode, label_set.cut) == (3, "cosine", 0.25)


def test_a_yaml_file_carries_templates_thresholds_and_options_and_the_command_line_wins(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text(
        "name: scenes\ntop: 2\nmode: softmax\ntemplates: ['a photo of a {}.', 'a picture of the {}']\n"
        "labels:\n  - beach\n  - name: snow\n    threshold: 0.4\n    templates: ['{} on the ground']\n"
    )
    label_set = load_label_file(path, top=1)
    assert (label_set.name, label_set.top, label_set.mode, label_set.cut) == ("scenes", 1, "softmax", 0.1)
    assert label_set.prompts() == [["a photo of a beach.", "a picture of the beach"], ["snow on the ground"]]
    assert label_set.thresholds().tolist() == pytest.approx([0.1, 0.4])
    listed = tmp_path / "list.yml"
    listed.write_text("- dog\n- cat\n")
    assert load_label_file(listed).names == ["dog", "cat"]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".txt", "no labels"),
        ("# only a comment\n\n", ".txt", "no labels"),
        ("dog\ncat\nDog\n", ".txt", "line 3: label 'Dog' is given twice (first at line 1)"),
        ("x" * 201 + "\n", ".txt", "line 1: label is 201 characters long; at most 200"),
        ("labels: [dog]\ntemplates: ['a photo of a dog']\n", ".yaml", "must hold '{}' exactly once"),
        ("labels: [dog]\ntemplates: ['{} and {}']\n", ".yaml", "must hold '{}' exactly once"),
        ("labels: [dog, {name: cat, threshold: 2}]\n", ".yaml", "threshold must be a number from -1 to 1"),
        ("labels: [dog\n", ".yaml", "not valid YAML"),
        ("labels: [dog]\ncolour: red\n", ".yaml", "unknown key 'colour'"),
        ("\xff\xfe", ".txt", "not UTF-8"),
    ],
)
def test_a_bad_label_file_gets_a_clear_error(tmp_path, content, suffix, message):
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    with pytest.raises(LabelSetError) as error:
        load_label_file(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_set_holds_at_most_ten_thousand_labels(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("\n".join(f"label {i}" for i in range(MAX_LABELS + 1)))
    with pytest.raises(LabelSetError, match="10,001 labels; a set holds at most 10,000"):
        load_label_file(path)
    path.write_text("\n".join(f"label {i}" for i in range(MAX_LABELS)))
    assert len(load_label_file(path).labels) == MAX_LABELS


# ── Deciding tags (pure) ────────────────────────────────────────────────────────────────────────────────


def test_cosine_mode_keeps_the_top_labels_above_their_threshold():
    label_set = make_label_set("s", ["a", {"name": "b", "threshold": 0.5}, "c", "d"], top=2, min_score=0.2)
    tags = decide(np.array([[0.3, 0.45, 0.1, 0.25], [0.1, 0.6, 0.05, 0.0]]), label_set)
    assert (tags[0].names, tags[0].scores) == (["a"], [0.3])  # top 2 are b and a; b is under its own 0.5
    assert (tags[1].names, tags[1].scores) == (["b"], [0.6])


def test_softmax_mode_is_clips_classifier_over_the_sets_labels():
    label_set = make_label_set("s", ["a", "b", "c"], top=3, min_score=0.2, mode="softmax")
    similarities = np.array([[0.30, 0.28, 0.20]])
    expected = np.exp(100 * similarities[0]) / np.exp(100 * similarities[0]).sum()
    tags = decide(similarities, label_set, logit_scale=100.0)[0]
    kept = [i for i in np.argsort(-expected) if expected[i] >= 0.2]
    assert tags.names == [["a", "b", "c"][i] for i in kept]
    assert tags.scores == pytest.approx([expected[i] for i in kept], abs=1e-4)


def test_the_top_images_of_each_label_equal_brute_force_across_batches_and_ties():
    rng = np.random.default_rng(3)
    scores = (0.98 * rng.random((500, 7))).astype(np.float32)
    scores[100:140, :3] = 0.99  # 40 copies of one image, best for three labels: which 25 of them is up to ids
    scores[200:210, 3:] = scores[7, 3:]  # and ten copies of another, somewhere in the ranks of the others
    ids = [f"{rng.integers(1 << 60):016x}" for _ in range(500)]
    top = TopImages(7, k=25)
    for start in range(0, 500, 64):
        top.add(ids[start : start + 64], scores[start : start + 64])
    for label, ranked in enumerate(top.ranked()):
        brute = sorted(range(500), key=lambda i: (-scores[i, label], ids[i]))[:25]
        assert [top.ids[row] for row, _ in ranked] == [ids[i] for i in brute]
        assert [score for _, score in ranked] == pytest.approx([float(scores[i, label]) for i in brute])


# ── On a real collection ────────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def indexed_store(photo_dir, settings, encoder, store):
    run_index([str(photo_dir)], settings, encoder, store)
    return store


def stored(store) -> dict[str, dict]:
    return {row["path"]: row for row in store.iter_rows(with_vectors=True)}


def label_similarities(vectors: np.ndarray, encoder, labels, templates) -> np.ndarray:
    """Independently of imgsearch/tagging.py: each label's prompts embedded one by one and averaged."""
    label_vectors = []
    for label in labels:
        prompts = np.stack([encoder.embed_texts([t.replace("{}", label)]).vectors[0] for t in templates])
        mean = prompts.astype(np.float64).mean(axis=0)
        label_vectors.append(mean / np.linalg.norm(mean))
    return vectors @ np.stack(label_vectors).T


def independent_tags(vectors: np.ndarray, encoder, labels, templates, top: int, cut) -> list[list[str]]:
    """What the tags must be: the ``top`` most similar labels, kept at ``cut`` (one per label, or one) or above."""
    similarities = label_similarities(vectors, encoder, labels, templates)
    cuts = np.broadcast_to(np.asarray(cut, dtype=np.float64), (len(labels),))
    return [[labels[j] for j in np.argsort(-row)[:top] if row[j] >= cuts[j] - 1e-6] for row in similarities]


def median_cuts(store, encoder, labels, templates, quantile: float = 0.5) -> list[float]:
    """Per label, a threshold about half the images (or ``1 - quantile`` of them) clear: the tiny test model ranks the labels alike for every
    picture, so only per-label thresholds make the tags differ between images."""
    vectors = np.asarray([row["vector"] for row in store.iter_rows(with_vectors=True)], dtype=np.float32)
    similarities = label_similarities(vectors, encoder, labels, templates)
    return [round(float(np.quantile(column, quantile)), 4) for column in similarities.T]


def test_tags_equal_an_independent_computation_from_the_stored_vectors(indexed_store, encoder, tmp_path):
    templates = ["a photo of a {}.", "a blurry picture of a {}"]
    cuts = median_cuts(indexed_store, encoder, LABELS, templates)
    labels = [{"name": name, "threshold": cut} for name, cut in zip(LABELS, cuts)]
    label_set = make_label_set("things", labels, templates=templates, top=3)
    before = stored(indexed_store)
    report = run_tagging(indexed_store, encoder, label_set)
    after = stored(indexed_store)
    paths = sorted(after)
    vectors = np.asarray([after[p]["vector"] for p in paths], dtype=np.float32)
    expected = independent_tags(vectors, encoder, LABELS, templates, top=3, cut=cuts)
    assert [list(after[p]["tags"]) for p in paths] == expected
    assert len({tuple(tags) for tags in expected}) >= 3  # the thresholds made the images' tags differ
    assert report.images == 10 and report.tagged == sum(bool(tags) for tags in expected)
    assert report.counts == {label: sum(label in tags for tags in expected) for label in LABELS}
    for p in paths:  # only the tags changed: vectors, files' facts and indexed_at are as they were
        assert {k: v for k, v in after[p].items() if k not in ("tags", "tag_scores", "text", "vector")} == {
            k: v for k, v in before[p].items() if k not in ("tags", "tag_scores", "text", "vector")
        }
        # the searchable text keeps names and descriptions and takes the new tags (BM25 finds images by them)
        assert text_parts(after[p]["text"])[:3] == text_parts(before[p]["text"])[:3]
        assert text_parts(after[p]["text"])[3] == " ".join(after[p]["tags"]).lower()
        np.testing.assert_allclose(after[p]["vector"], before[p]["vector"])
    again = run_tagging(indexed_store, encoder, label_set)
    assert again.updated == 0  # unchanged tags are not written again


def test_filtering_by_tag_returns_only_tagged_images(indexed_store, encoder):
    label, other = "dog", "beach"
    first = median_cuts(indexed_store, encoder, [label], ["a photo of a {}."])[0]
    second = median_cuts(indexed_store, encoder, [other], ["a photo of a {}."], quantile=0.25)[0]
    run_tagging(
        indexed_store,
        encoder,
        make_label_set("things", [{"name": label, "threshold": first}, {"name": other, "threshold": second}], top=2),
    )
    rows = stored(indexed_store)
    with_tag = {name: {p for p, row in rows.items() if name in row["tags"]} for name in (label, other)}
    assert 0 < len(with_tag[label]) < 10 and with_tag[label] != with_tag[other]
    query = np.asarray(next(iter(rows.values()))["vector"])[None, :]
    for request, expected in (
        (SearchFilter(tags_any=[label]), with_tag[label]),
        (SearchFilter(tags_any=[label, other]), with_tag[label] | with_tag[other]),
        (SearchFilter(tags_all=[label, other]), with_tag[label] & with_tag[other]),
    ):
        hits = indexed_store.search(query, limit=50, image_filter=ImageFilter.from_request(request))[0]
        assert {hit.row["path"] for hit in hits} == expected
        assert all(set(hit.row["tags"]) & set(request.tags_any or request.tags_all) for hit in hits)
    assert with_tag[label] & with_tag[other]  # the tags_all case had images to find


def test_the_export_equals_brute_force_over_the_stored_vectors(indexed_store, encoder, tmp_path):
    label_set = make_label_set("things", LABELS + ["a/b: odd", "imgsearch-export"], top=1)
    out = tmp_path / "export"
    run_tagging(indexed_store, encoder, label_set, Export(out, k=4, links=True))
    rows = list(stored(indexed_store).values())
    vectors = np.asarray([row["vector"] for row in rows], dtype=np.float64)
    texts = encoder.embed_texts([f"a photo of a {label}." for label in label_set.names]).vectors.astype(np.float64)
    index = json.loads((out / "imgsearch-export.json").read_text())
    assert index["labels"]["a/b: odd"] == "a_b_ odd"  # no path separator from a label reaches the disk
    assert index["labels"]["imgsearch-export"] == "imgsearch-export-2"  # the index file keeps its name
    for j, label in enumerate(label_set.names):
        scores = vectors @ texts[j]
        brute = sorted(range(len(rows)), key=lambda i: (-scores[i], rows[i]["id"]))[:4]
        name = index["labels"][label]
        listed = json.loads((out / f"{name}.json").read_text())["images"]
        assert [image["path"] for image in listed] == [rows[i]["path"] for i in brute]
        assert [image["score"] for image in listed] == pytest.approx([scores[i] for i in brute], abs=1e-5)
        with open(out / f"{name}.csv", newline="") as handle:
            assert [line["path"] for line in csv.DictReader(handle)] == [rows[i]["path"] for i in brute]
        links = sorted((out / name).iterdir())
        assert [os.readlink(link) for link in links] == [rows[i]["path"] for i in brute]
    (out / "mine.txt").write_text("not ours")  # an earlier export may be replaced, but no other folder
    run_tagging(indexed_store, encoder, label_set, Export(out, k=2))
    assert (out / "mine.txt").exists()
    other = tmp_path / "holiday"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="not empty, and not an earlier imgsearch export"):
        run_tagging(indexed_store, encoder, label_set, Export(other, k=2))


def test_images_indexed_later_get_the_stored_sets_tags(indexed_store, photo_dir, settings, encoder):
    label_set = make_label_set("things", LABELS, top=2, min_score=-1)
    save_label_set(indexed_store, label_set)
    run_tagging(indexed_store, encoder, label_set)
    write_photo(photo_dir / "later" / "new.png", seed=77)
    report = run_index([str(photo_dir)], settings, encoder, indexed_store)
    assert report.embedded == 1
    rows = stored(indexed_store)
    new = rows[str(photo_dir / "later" / "new.png")]
    expected = independent_tags(
        np.asarray([new["vector"]], dtype=np.float32), encoder, LABELS, ["a photo of a {}."], top=2, cut=-1
    )[0]
    assert list(new["tags"]) == expected and len(expected) == 2
    assert all(len(row["tags"]) == 2 for row in rows.values())


def test_removing_a_set_takes_its_tags_off_and_keeps_the_others(indexed_store, encoder):
    from imgsearch.tagging.jobs import remove_label_set

    animals = make_label_set("animals", ["dog", "cat"], top=1, min_score=-1)
    scenes = make_label_set("scenes", ["beach", "snow"], top=1, min_score=-1)
    for label_set in (animals, scenes):
        save_label_set(indexed_store, label_set)
        run_tagging(indexed_store, encoder, label_set)
    assert all(len(row["tags"]) == 2 for row in stored(indexed_store).values())  # one from each set
    assert remove_label_set(indexed_store, "animals") and not remove_label_set(indexed_store, "animals")
    report = run_tagging(indexed_store, encoder)
    assert report.label_sets == ["scenes"] and report.updated == 10
    assert all(list(row["tags"]) in (["beach"], ["snow"]) for row in stored(indexed_store).values())


def test_an_upgrade_from_schema_2_keeps_every_row_and_gives_empty_tags(settings, encoder, photo_dir, store):
    """A collection written by an earlier imgsearch (schema 2) is upgraded with no file left to read."""
    from pymilvus import MilvusClient

    from imgsearch.indexer.upgrade import upgrade
    from imgsearch.store.fields import COLUMNS, SCHEMA_VERSION, add_columns

    run_index([str(photo_dir)], settings, encoder, store)
    rows = {row["id"]: row for row in store.iter_rows(with_vectors=True)}
    store.drop()
    v2 = [column for column in COLUMNS if column.since <= 2]
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    import imgsearch.store.fields as fields

    original = fields.COLUMNS
    fields.COLUMNS = tuple(v2)
    try:
        add_columns(schema, encoder.dim)
    finally:
        fields.COLUMNS = original
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    store._call(
        lambda c: c.create_collection(
            f"{store.collection}_v2",
            schema=schema,
            index_params=index,
            properties={"imgsearch.model": encoder.name, "imgsearch.dim": "16", "imgsearch.schema": "2"},
        )
    )
    store._call(lambda c: c.create_alias(f"{store.collection}_v2", store.collection))
    newer = ("tags", "tag_scores", "text", "image_text", "text_read_from")
    old_rows = [{k: v for k, v in row.items() if k not in newer} for row in rows.values()]
    store._call(lambda c: c.upsert(store.collection, old_rows))
    for path in photo_dir.rglob("*.*"):
        path.unlink()  # nothing needs the files
    report = upgrade(store, settings.max_file_bytes)
    assert (report.from_version, report.to_version, report.rows) == (2, SCHEMA_VERSION, 10)
    upgraded = {row["id"]: row for row in store.iter_rows(with_vectors=True)}
    assert set(upgraded) == set(rows)
    for row_id, row in upgraded.items():
        assert list(row["tags"]) == [] and row["taken_at"] == rows[row_id]["taken_at"]
        np.testing.assert_allclose(row["vector"], rows[row_id]["vector"])


# ── The API ────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(params=["vector-copy", "milvus"])
def api(request, settings, encoder, photo_dir):
    from imgsearch.store import MilvusStore

    store = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, encoder, store)
    store.close()
    if request.param == "milvus":
        with TestClient(create_app(settings.model_copy(update={"vector_cache": "off"}), encoder=encoder)) as client:
            yield client
        return
    with CopyAnsweringClient(create_app(settings.model_copy(update={"vector_cache": "on"}), encoder=encoder)) as client:
        client.app.state.store.search = milvus_search_forbidden
        yield client


def finished(client, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/index/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_the_api_adds_a_label_set_tags_filters_counts_and_removes(api):
    body = {"name": "things", "labels": ["dog", {"name": "cat", "threshold": -1}, "beach"], "top": 2, "min_score": 0.0}
    started = api.post("/labels", json=body)
    assert started.status_code == 202 and started.json()["kind"] == "tag"
    job = finished(api, started.json()["job_id"])
    assert job["state"] == "done" and job["report"]["images"] == 10 and job["processed"] == 10
    assert job["report"]["counts"]["cat"] == 10  # its own threshold of -1 keeps it on every image
    assert api.get("/labels").json() == [
        {"name": "things", "labels": 3, "mode": "cosine", "top": 2, "min_score": 0.0, "templates": ["a photo of a {}."]}
    ]
    assert api.get("/labels/things").json()["label_names"] == ["dog", "cat", "beach"]
    counts = api.get("/tags").json()
    assert counts["images"] == 10 and counts["tags"] == {k: v for k, v in job["report"]["counts"].items() if v}
    assert list(counts["tags"].values()) == sorted(counts["tags"].values(), reverse=True)

    everything = api.post("/search", json={"text": "a dog", "limit": 50, "facets": True}).json()
    assert all(hit["tags"] and len(hit["tags"]) == len(hit["tag_scores"]) for hit in everything["results"])
    assert everything["facets"] == counts["tags"]  # all ten returned: the same counts
    rare = min(counts["tags"], key=counts["tags"].get)
    only = api.post(
        "/search", json={"text": "a dog", "limit": 50, "facets": True, "filter": {"tags_any": [rare]}}
    ).json()
    assert len(only["results"]) == counts["tags"][rare] and all(rare in hit["tags"] for hit in only["results"])
    assert only["facets"][rare] == counts["tags"][rare]
    assert (
        "facets" not in api.post("/search", json={"text": "a dog"}).json()
        or api.post("/search", json={"text": "a dog"}).json()["facets"] is None
    )

    removed = finished(api, api.delete("/labels/things").json()["job_id"])
    assert removed["state"] == "done" and api.get("/labels").json() == []
    assert api.get("/tags").json()["tags"] == {}
    assert api.delete("/labels/things").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "s", "labels": ["dog", "DOG"]}, "given twice"),
        ({"name": "s", "labels": ["dog"], "templates": ["no placeholder"]}, "must hold '{}' exactly once"),
        ({"name": "s", "labels": []}, "at least 1 item"),
        ({"name": "s", "labels": ["x" * 201]}, "at most 200 characters"),
        ({"name": "s", "labels": ["dog"] * 10_001}, "at most 10000 items"),
        ({"name": "../etc", "labels": ["dog"]}, "should match pattern"),
    ],
)
def test_the_api_refuses_a_bad_label_set_with_422(settings, encoder, body, message):
    with TestClient(create_app(settings.model_copy(update={"vector_cache": "off"}), encoder=encoder)) as client:
        response = client.post("/labels", json=body)
        assert response.status_code == 422 and message in response.json()["detail"], response.json()
        assert client.get("/labels").json() == []


# ── The CLI, as a user runs it ─────────────────────────────────────────────────────────────────────────


def test_the_cli_tags_lists_filters_and_explains_a_bad_file(imgsearch_bin, cli_env, photo_dir, tmp_path):
    assert run_cli(imgsearch_bin, cli_env, "index", str(photo_dir)).returncode == 0
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\nbeach\n")
    tagged = run_cli(
        imgsearch_bin, cli_env, "tag", "--labels", str(labels), "--top", "1", "--min-score", "-1", "--json"
    )
    assert tagged.returncode == 0, tagged.stderr
    report = json.loads(tagged.stdout)
    assert report["label_set"] == "labels" and report["tagged"] == 10 and sum(report["counts"].values()) == 10
    listed = run_cli(imgsearch_bin, cli_env, "tag", "--list")
    assert listed.stdout.strip() == "labels: 3 labels, cosine, top 1, min score -1.0"
    label = max(report["counts"], key=report["counts"].get)
    found = run_cli(imgsearch_bin, cli_env, "search", "anything", "--tag", label, "-k", "20", "--json")
    hits = json.loads(found.stdout)
    assert len(hits) == report["counts"][label] and all(hit["tags"] == [label] for hit in hits)
    bad = tmp_path / "bad.txt"
    bad.write_text("dog\ndog\n")
    refused = run_cli(imgsearch_bin, {**cli_env, "IMGSEARCH_MODEL": "/nonexistent"}, "tag", "--labels", str(bad))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (
        refused.stderr.strip() == f"imgsearch tag: error: {bad}: line 2: label 'dog' is given twice (first at line 1)"
    )


def test_a_label_set_survives_a_restart_of_the_api(settings, encoder, photo_dir, store, tmp_path):
    run_index([str(photo_dir)], settings, encoder, store)
    save_label_set(store, make_label_set("kept", ["dog"], top=1))
    store.close()
    with TestClient(create_app(settings.model_copy(update={"vector_cache": "off"}), encoder=encoder)) as client:
        assert [s["name"] for s in client.get("/labels").json()] == ["kept"]
    assert Path(settings.milvus_uri).exists()
