"""``imgsearch upgrade``: bring a collection written by an older imgsearch to the current schema.

Milvus cannot add a column to a collection, so the upgrade builds the new version beside the old one
(``images_v2`` beside ``images``), copies every row and vector over in batches, and fills the new columns
from the files where it can (an EXIF date, the format) and from the row where it cannot (the file's time).
Nothing is embedded again. Then it points the configured name at the new collection and drops the old one.

A crash before the copy is complete leaves the old collection serving; a re-run starts the copy again. A
crash after it finishes what is left: naming the new collection (``MilvusStore.finish_interrupted_switch``,
which ``index`` and ``serve`` also call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from imgsearch.errors import CollectionNotFoundError, SchemaTooNewError
from imgsearch.media.facts import date_taken, searchable_text
from imgsearch.media.images import PhotoExif, header_description, photo_header
from imgsearch.media.safe_files import UnsafeFileError, open_regular, read_regular
from imgsearch.search.relevance import family_cutoff
from imgsearch.store.catalogue import CUTOFF_PROPERTY, LABEL_SET_PROPERTY, UPGRADE_PROPERTY
from imgsearch.store.fields import (
    COLUMNS,
    SCHEMA_VERSION,
    FileFacts,
    columns_of,
    content_hash,
)
from imgsearch.store.gateway import MilvusStore

UPGRADED_FROM_PROPERTY = "imgsearch.upgraded_from"

_FROM_THE_ROW = ("path", "size", "mtime_ns", "content_hash", "width", "height")  # schema 1 has these
_PHOTO_FACTS = ("taken_at", "taken_at_source", "format", "camera_make", "camera_model", "gps")  # and 2 these
# Properties that describe what the collection holds; the new collection gets its own creation token.
_KEPT_PROPERTIES = ("imgsearch.model", "imgsearch.dim", "imgsearch.fingerprint", "imgsearch.roots", CUTOFF_PROPERTY)


@dataclass
class UpgradeReport:
    from_version: int
    to_version: int
    rows: int = 0
    dated_by_exif: int = 0
    files_unreadable: int = 0  # gone, changed since indexing, or outside the indexed roots: filled from the row
    elapsed_s: float = 0.0


def upgrade(
    store: MilvusStore,
    max_file_bytes: int,
    batch_size: int = 500,
    on_progress: Callable[[int, int], None] | None = None,
) -> UpgradeReport:
    """Upgrade ``store``'s collection to SCHEMA_VERSION (see the module docstring)."""
    started = time.monotonic()
    if not store.exists():
        if store.finish_interrupted_switch():
            return UpgradeReport(int(store._properties()[UPGRADED_FROM_PROPERTY]), SCHEMA_VERSION, rows=store.count())
        raise CollectionNotFoundError(store.collection)
    version = store.schema_version()
    report = UpgradeReport(version, SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(store.collection, version, SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        return report
    old, new = store.target(), store.physical_name(SCHEMA_VERSION)
    if not store.upgrade_complete(new):
        _copy(store, version, new, max_file_bytes, batch_size, report, on_progress)
    else:
        report.rows = store.count()
    # Switch: from here on the configured name means the new collection.
    if old == store.collection:  # made before names were aliases: the name must be free for the alias
        store._call(lambda c: c.drop_collection(old))
        store._call(lambda c: c.create_alias(new, store.collection))
    else:
        store._call(lambda c: c.alter_alias(new, store.collection))
        store._call(lambda c: c.drop_collection(old))
    store._wrote()
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def _copy(
    store: MilvusStore,
    version: int,
    new: str,
    max_file_bytes: int,
    batch_size: int,
    report: UpgradeReport,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    if store._call(lambda c: c.has_collection(new)):
        store._call(lambda c: c.drop_collection(new))  # a copy cut short: start it again
    properties = store._properties()
    kept = {
        key: value for key, value in properties.items() if key in _KEPT_PROPERTIES or key.startswith(LABEL_SET_PROPERTY)
    }
    kept.setdefault(CUTOFF_PROPERTY, family_cutoff(properties.get("imgsearch.model", "")).to_json())
    store.create_physical(
        new, store.model_info()[1], kept | {UPGRADE_PROPERTY: "copying", UPGRADED_FROM_PROPERTY: str(version)}
    )
    roots = store.indexed_roots()
    total = store.count()
    if on_progress:
        on_progress(0, total)
    rows = store.iter_rows(fields=columns_of(version), with_vectors=True, batch_size=batch_size)
    for batch in _batched(rows, batch_size):
        upgraded = [_upgraded_row(row, version, roots, max_file_bytes, report) for row in batch]
        store._call(lambda c, rows=upgraded: c.upsert(new, rows))
        report.rows += len(upgraded)
        if on_progress:
            on_progress(report.rows, total)
    store._call(lambda c: c.flush(new))
    store.set_properties(new, {UPGRADE_PROPERTY: "complete"})


def _upgraded_row(
    row: dict[str, Any], version: int, roots: list[str], max_file_bytes: int, report: UpgradeReport
) -> dict[str, Any]:
    """The row with the columns added since ``version`` filled: from the file if it still holds the content
    that was indexed, else from the row itself. From version 2 on, the row knows every fact of its file."""
    if version >= 2:
        text = _searchable_text(row, _file_head(row, roots, max_file_bytes), roots)
        facts = FileFacts(**{name: row[name] for name in _FROM_THE_ROW + _PHOTO_FACTS}, text=text)
        return {**row, **{column.name: column.fill(facts) for column in COLUMNS if column.since > version}}
    try:
        data = read_regular(row["path"], roots, max_file_bytes)
    except (UnsafeFileError, OSError):
        data = None
    if data is not None and content_hash(data) != row["content_hash"]:
        data = None  # changed since it was indexed: the next `imgsearch index` embeds it again anyway
    image_format, exif = photo_header(data) if data is not None else ("", PhotoExif())
    if data is None:
        report.files_unreadable += 1
    if exif.taken_at is not None:
        report.dated_by_exif += 1
    taken_at, source = date_taken(exif.taken_at, row["mtime_ns"])
    facts = FileFacts(
        **{name: row[name] for name in _FROM_THE_ROW},
        taken_at=taken_at,
        taken_at_source=source,
        format=image_format,
        camera_make=exif.camera_make,
        camera_model=exif.camera_model,
        gps=exif.gps,
        text=_searchable_text(row, data, roots),
    )
    added = {column.name: column.fill(facts) for column in COLUMNS if column.since > version}
    return {**row, **added}


_HEAD_BYTES = 256 * 1024  # where JPEG, PNG and WEBP keep their EXIF, IPTC and XMP


def _file_head(row: dict[str, Any], roots: list[str], max_file_bytes: int) -> bytes | None:
    """The first bytes of the row's file, if it is still the size that was indexed (else None)."""
    try:
        handle, size = open_regular(row["path"], roots, max_file_bytes)
    except (UnsafeFileError, OSError):
        return None
    with handle:
        return handle.read(_HEAD_BYTES) if size == row["size"] else None


def _searchable_text(row: dict[str, Any], head: bytes | None, roots: list[str]) -> str:
    """Schema 4's ``text``: names from the path, the file's own description, its sidecars, the row's tags."""
    return searchable_text(row["path"], header_description(head) if head else "", roots, row.get("tags") or [])


def _batched(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
