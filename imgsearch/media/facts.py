"""A file's facts as its row records them: size and times, picture size and format, when it was taken, and its
searchable text. Built here, in one place, for a file just decoded, for a copy of content already indexed, and for
an older row that an upgrade fills in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from imgsearch.media.images import DecodedImage
from imgsearch.media.searchable_text import compose, name_words, sidecar_text
from imgsearch.media.searchable_text import parts as text_parts
from imgsearch.store.fields import FileFacts, mtime_wall_clock, wall_clock_seconds


def date_taken(exif_taken_at: datetime | None, mtime_ns: int) -> tuple[int, str]:
    """(taken_at, its source): the EXIF date where the photo has one, else the file's modification time."""
    if exif_taken_at is not None:
        return wall_clock_seconds(exif_taken_at), "exif"
    return mtime_wall_clock(mtime_ns), "mtime"


def searchable_text(
    path: str, description: str, roots: list[str], tags: Sequence[str] = (), image_text: str = ""
) -> str:
    """The words a row is found by: names from its path, the file's own description, its sidecars, its tags, the
    text read in its picture."""
    return compose(name_words(path), description, sidecar_text(path, roots), list(tags), image_text)


def decoded_facts(
    path: str, size: int, mtime_ns: int, content_hash: str, decoded: DecodedImage, roots: list[str]
) -> FileFacts:
    """The facts of a file the indexer has just read and decoded."""
    exif = decoded.exif
    taken_at, source = date_taken(exif.taken_at, mtime_ns)
    return FileFacts(
        path,
        size,
        mtime_ns,
        content_hash,
        decoded.width,
        decoded.height,
        taken_at,
        source,
        decoded.format,
        exif.camera_make,
        exif.camera_model,
        exif.gps,
        searchable_text(path, decoded.description, roots),
    )


def copied_facts(path: str, size: int, mtime_ns: int, source: dict[str, Any], roots: list[str]) -> FileFacts:
    """A file whose content is indexed under another row: the same picture, so the same photo facts, embedded
    description and text read in it (a date from the file's time is this file's time; names and sidecars are its
    own)."""
    taken_at = source["taken_at"] if source["taken_at_source"] == "exif" else mtime_wall_clock(mtime_ns)
    description = text_parts(source.get("text", ""))[1]
    return FileFacts(
        path,
        size,
        mtime_ns,
        source["content_hash"],
        source["width"],
        source["height"],
        taken_at,
        source["taken_at_source"],
        source["format"],
        source["camera_make"],
        source["camera_model"],
        source["gps"],
        searchable_text(path, description, roots, image_text=source.get("image_text", "")),
        source.get("image_text", ""),
        source.get("text_read_from", ""),
    )
