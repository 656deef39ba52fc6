"""The vector copy's word searches answer as Milvus Lite's own do, from memory: the same rows in the same order."""

from __future__ import annotations

import pytest

from imgsearch.media.searchable_text import compose, name_words
from imgsearch.store.fields import SearchFilter
from imgsearch.store.filters import ImageFilter
from imgsearch.store.vector_copy import VectorCopy
from imgsearch.store.words import words_of
from tests.support.vectors import DIM, unit_rows

READ = {
    3: "GATE B17 BOARDING 07:45",
    5: "Error 0x80070005 Access denied",
    8: "TOTAL 58213 EUR\nThank you",
    11: "東京駅 出口 B17",
    12: "Receipt RE16TGK paid",
}
QUERIES = [
    "img4",
    "img1 img2",
    "lib 3",
    "img_3",
    "b17",
    "gate",
    "07:45",
    "0x80070005",
    "58213",
    "re16",
    "東京駅",
    "東京",
    "nothing here",
]


@pytest.fixture
def worded(store):
    """60 rows named /lib/N/imgI.jpg and /holiday 2019/..., some with text read in them and descriptions."""
    store.ensure_collection("test-model", DIM)
    rows = unit_rows(40, seed=1) + unit_rows(20, seed=2, prefix="/holiday 2019/")
    for i, row in enumerate(rows):
        row["image_text"] = READ.get(i, "")
        description = "sunset over the harbour" if i % 9 == 0 else ""
        row["text"] = compose(name_words(row["path"]), description, image_text=row["image_text"])
    store.upsert(rows)
    copy = VectorCopy(store, DIM)
    copy.sync_now()
    return copy


@pytest.mark.parametrize("query", QUERIES)
def test_the_copy_ranks_words_as_milvus_does(worded, store, query):
    by_milvus = [hit.id for hit in store.search_text(query, 20)]
    by_copy = [hit.id for hit in worded.search_text(query, 20)]
    assert by_copy == by_milvus
    assert [hit.id for hit in worded.search_image_text(query, 20)] == [
        hit.id for hit in store.search_image_text(query, 20)
    ]


def test_the_copy_answers_words_without_asking_milvus_and_filters_them(worded, store, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Milvus was asked while the copy is fresh")

    monkeypatch.setattr(store, "search_text", refuse)
    monkeypatch.setattr(store, "search_image_text", refuse)
    holiday = ImageFilter.from_request(SearchFilter(path_prefix="/holiday 2019/"))
    found = worded.search_text("img3 sunset", 50, holiday)
    assert found and all(hit.row["path"].startswith("/holiday 2019/") for hit in found)
    assert [hit.row["image_text"] for hit in worded.search_image_text("B17", 5)] == [READ[3], READ[11]]


def test_words_split_as_the_analyzer_splits_them():
    assert words_of("IMG_2041 Paris-2019 東京駅 07:45 3.14") == [
        "img_2041",
        "paris",
        "2019",
        "東京駅",
        "07",
        "45",
        "3.14",
    ]


def test_ties_go_by_id_wherever_the_search_runs(store):
    """Rows of the same words, written in the reverse of their ids' order: Milvus Lite would list them as written,
    the copy by id; both now list them by id, so a page is the same from the API and from the command line."""
    store.ensure_collection("test-model", DIM)
    rows = unit_rows(12, seed=3)
    for row in rows:
        row["text"] = compose("same words here")
    store.upsert(list(reversed(rows)))
    copy = VectorCopy(store, DIM)
    copy.sync_now()
    by_id = sorted(row["id"] for row in rows)
    assert [hit.id for hit in store.search_text("words", 12)] == by_id
    assert [hit.id for hit in copy.search_text("words", 12)] == by_id
