"""The incremental plan, as pure logic: what is unchanged, what must be read, what is gone."""

from imgsearch.indexer.plan import make_plan
from imgsearch.indexer.scanner import FileEntry
from imgsearch.store.fields import image_id


def row(path, size=10, mtime_ns=1, content_hash="h"):
    return {"id": image_id(path), "path": path, "size": size, "mtime_ns": mtime_ns, "content_hash": content_hash}


def test_same_size_and_mtime_is_unchanged_and_anything_else_is_read_again():
    files = [
        FileEntry("/r/a.jpg", 10, 1),
        FileEntry("/r/b.jpg", 11, 1),
        FileEntry("/r/c.jpg", 10, 2),
        FileEntry("/r/new.jpg", 5, 5),
    ]
    plan = make_plan(files, [row("/r/a.jpg"), row("/r/b.jpg"), row("/r/c.jpg")], ["/r"])
    assert [f.path for f in plan.unchanged] == ["/r/a.jpg"]
    assert [f.path for f in plan.to_process] == ["/r/b.jpg", "/r/c.jpg", "/r/new.jpg"]
    assert plan.stale == []


def test_rows_of_vanished_files_are_stale_only_under_the_indexed_roots():
    stored = [row("/r/gone.jpg"), row("/other/kept.jpg"), row("/rx/not-under-r.jpg")]
    plan = make_plan([], stored, ["/r"])
    assert [r["path"] for r in plan.stale] == ["/r/gone.jpg"]


def test_stored_content_is_findable_by_hash():
    plan = make_plan([], [row("/r/a.jpg", content_hash="abc")], ["/r"])
    assert plan.rows_by_hash["abc"]["path"] == "/r/a.jpg"


def test_ids_are_stable_and_distinct():
    assert image_id("/r/a.jpg") == image_id("/r/a.jpg")
    assert image_id("/r/a.jpg") != image_id("/r/b.jpg")


def test_ids_are_16_hex_digits_also_for_names_that_are_not_utf8():
    import os
    import re

    odd = os.fsdecode(b"/r/caf\xe9.jpg")  # a Latin-1 name, as found on old disks: not valid UTF-8
    assert re.fullmatch(r"[0-9a-f]{16}", image_id(odd)) and re.fullmatch(r"[0-9a-f]{16}", image_id("/r/a.jpg"))
    assert image_id(odd) == image_id(odd) != image_id("/r/cafe.jpg")
