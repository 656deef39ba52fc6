"""A filter keeps the same rows whether Milvus evaluates its expression or the vector copy its mask."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsearch.store.fields import METADATA_FIELDS, SearchFilter
from imgsearch.store.filters import Clause, ImageFilter, prefix_end

DIM = 4
# Paths with what breaks string literals and ranges: quotes, backslashes, newlines, '_' and '%', characters
# around the surrogate gap, and the last code point.
PATH_CHARS = st.sampled_from(list('ab_%"\\\n\t /') + ["\ud7ff", "\ue000", "\uffff", "\U0010ffff", "é", "日"])
paths = st.text(PATH_CHARS, min_size=0, max_size=6).map(lambda tail: "/p/" + tail)
DAY = 86_400
FORMATS = ["JPEG", "PNG", "WEBP", ""]
CAMERAS = ["X100V", "iPhone 12", 'odd "model"\\', ""]
TAGS = ["dog", "beach", 'a "quoted" tag\\', "日"]
tag_lists = st.lists(st.sampled_from(TAGS), max_size=3, unique=True)
IMAGE_TEXTS = ["", "EXIT 12", 'a "quoted"\\ line\nand 日本']
rows_strategy = st.lists(
    st.tuples(
        paths,
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(0, 10).map(lambda d: 1_500_000_000 + d * DAY),
        st.sampled_from(FORMATS),
        st.sampled_from(CAMERAS),
        tag_lists,
        st.sampled_from(IMAGE_TEXTS),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda row: row[0],
)


def filters_over(rows):
    known_prefixes = st.sampled_from([row[0][:cut] for row in rows for cut in range(len(row[0]) + 1)])
    bound = st.none() | st.integers(0, 41)
    day = st.none() | st.integers(0, 11).map(lambda d: datetime.fromtimestamp(1_500_000_000 + d * DAY, UTC))
    some = st.none() | st.lists(st.sampled_from(FORMATS[:-1] + ["GIF"]), max_size=3)
    cameras = st.none() | st.lists(st.sampled_from(CAMERAS[:-1]), max_size=2)
    tags = st.none() | st.lists(st.sampled_from(TAGS + ["cat"]), min_size=1, max_size=2)
    return st.builds(
        lambda prefix, min_w, max_w, min_h, max_h, after, before, formats, models, tags_any, tags_all, has: (
            SearchFilter(
                path_prefix=prefix,
                min_width=min_w,
                max_width=max_w,
                min_height=min_h,
                max_height=max_h,
                taken_after=after,
                taken_before=before,
                formats=formats,
                cameras=models,
                tags_any=tags_any,
                tags_all=tags_all,
                has_text=has,
            )
        ),
        st.none() | known_prefixes | paths,
        bound,
        bound,
        bound,
        bound,
        day,
        day,
        some,
        cameras,
        tags,
        tags,
        st.none() | st.booleans(),
    )


@pytest.fixture
def collection(store):
    store.ensure_collection("test-model", DIM)
    return store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rows=rows_strategy)
def test_milvus_and_the_mask_keep_the_same_rows(collection, data, rows):
    store = collection
    stored = [
        {
            "id": f"{i:016d}",
            "path": path,
            "size": 1,
            "mtime_ns": 1,
            "content_hash": "h",
            "width": width,
            "height": height,
            "indexed_at": 1,
            "taken_at": taken_at,
            "taken_at_source": "exif",
            "format": image_format,
            "camera_make": "",
            "camera_model": camera,
            "gps": "",
            "tags": tags,
            "tag_scores": [0.3] * len(tags),
            "text": "",
            "image_text": image_text,
            "text_read_from": "h",
            "vector": np.ones(DIM, np.float32),
        }
        for i, (path, width, height, taken_at, image_format, camera, tags, image_text) in enumerate(rows)
    ]
    store.delete([row["id"] for row in store.iter_rows(fields=["id"])])
    store.upsert(stored)
    for _ in range(5):
        image_filter = ImageFilter.from_request(data.draw(filters_over(rows)))
        by_milvus = {row["id"] for row in store.iter_rows(fields=["id"], filter_expr=image_filter.expr())}
        columns = {name: [row[name] for row in stored] for name in METADATA_FIELDS}
        mask = image_filter.mask(columns, len(stored))
        by_mask = {row["id"] for row, keep in zip(stored, mask if mask is not None else [True] * len(stored)) if keep}
        assert by_milvus == by_mask, image_filter.expr()


@settings(deadline=None)
@given(prefix=st.text(PATH_CHARS, max_size=4), other=st.text(PATH_CHARS, max_size=6))
def test_the_prefix_range_holds_exactly_the_strings_with_the_prefix(prefix, other):
    end = prefix_end(prefix)
    in_range = prefix <= other and (end is None or other < end)
    assert in_range == other.startswith(prefix)


def test_an_empty_filter_keeps_every_row_and_says_nothing():
    assert ImageFilter.from_request(None).expr() == "" and ImageFilter.from_request(SearchFilter()).clauses == ()
    assert ImageFilter.from_request(SearchFilter(path_prefix="")).mask({"path": ["/a"]}, 1) is None


def test_bounds_become_clauses_in_the_order_they_are_declared():
    image_filter = ImageFilter.from_request(SearchFilter(max_height=5, min_width=2, path_prefix="/x"))
    assert image_filter.clauses == (Clause("path", "prefix", "/x"), Clause("width", ">=", 2), Clause("height", "<=", 5))
    assert image_filter.expr() == '(path >= "/x" and path < "/y") and width >= 2 and height <= 5'
