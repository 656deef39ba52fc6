"""The collection's columns, declared once.

Each column says its Milvus type, how the indexer fills it from a file, which schema version added it, and
whether searches can filter on it (and how). The schema, the rows the indexer writes, the upgrade of older
collections, the request filter model (and so the OpenAPI schema), the Milvus expression and the vector copy's
columns are all read from ``COLUMNS``.

Adding a filterable column: declare it here (with ``since=SCHEMA_VERSION + 1`` and a new SCHEMA_VERSION), fill
it where the file is read (``FileFacts``, filled in ``indexer/runner.py`` and for older rows in
``imgsearch/store/upgrade.py``), and show it in the UI. The rest follows.
"""

from __future__ import annotations

import calendar
import enum
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

MAX_PATH = 4096  # the longest path a row holds
SCHEMA_VERSION = 5  # 1: file metadata and size; 2: when the photo was taken, its format and camera; 3: tags;
# 4: searchable text (names, descriptions, tags) with its BM25 index; 5: the text read in the picture
MAX_IMAGE_TEXT = 4096  # characters of text read in one picture (imgsearch/ocr) that a row keeps
MAX_TAGS = 64  # tags one image holds (imgsearch/labels.py decides them)
MAX_TAG_CHARS = 200
MAX_TEXT = 8192  # imgsearch/searchable_text.py fills it
TEXT_SPARSE = "text_sparse"  # the BM25 vector Milvus derives from ``text``


def fit_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` in UTF-8 (what Milvus counts a VARCHAR's length in), whole
    characters only."""
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")


def image_id(path: str) -> str:
    """A stable id for the file at ``path``: the same path always gets the same id (ids on disk depend on it)."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def content_hash(data: bytes) -> str:
    """What tells two files with the same bytes apart from all others (a moved or copied file is found by it)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def wall_clock_seconds(moment: datetime) -> int:
    """A local wall-clock time as seconds since 1970-01-01 read as UTC: how ``taken_at`` is kept.

    EXIF dates carry no time zone, so a photo taken at 09:00 on holiday is stored as 09:00, and a filter
    "taken after 2019-06-01" means after midnight where the photo was taken. An aware datetime counts by
    its own wall clock too."""
    return calendar.timegm(moment.replace(tzinfo=None).timetuple())


def wall_clock_datetime(seconds: int) -> datetime:
    """The inverse of wall_clock_seconds: a stored ``taken_at`` as a datetime without a zone."""
    return _EPOCH + timedelta(seconds=seconds)


_EPOCH = datetime(1970, 1, 1)


def mtime_wall_clock(mtime_ns: int) -> int:
    """A file's modification time on this machine's wall clock, kept like an EXIF date."""
    return wall_clock_seconds(datetime.fromtimestamp(mtime_ns / 1e9))


@dataclass(frozen=True)
class FileFacts:
    """What the indexer knows about one file when it writes its row."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int
    taken_at: int = 0  # wall_clock_seconds(); from EXIF, else from mtime_ns (see taken_at_source)
    taken_at_source: str = ""  # "exif" or "mtime"
    format: str = ""  # as Pillow names it: JPEG, PNG, WEBP, HEIF ...; "" if not known
    camera_make: str = ""
    camera_model: str = ""
    gps: str = ""  # "lat,lon" in decimal degrees, "" if the photo has none
    text: str = ""  # searchable words: imgsearch/searchable_text.compose()
    image_text: str = ""  # the text read in the picture (imgsearch/ocr), lines joined by newlines
    text_read_from: str = ""  # the content hash that image_text was read from; "" while not read yet


# ── How a column is filtered: each kind names its request fields and turns them into clauses ──────────


@dataclass(frozen=True)
class Clause:
    column: str
    op: str  # "prefix", ">=", "<=", "<", "in"; "any" or "all" on an array; "filled" (value: True or False)
    value: Any


@dataclass(frozen=True)
class Prefix:
    param: str
    description: str

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        return {self.param: (str | None, Field(None, max_length=MAX_PATH, description=self.description))}

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        return [Clause(column.name, "prefix", given[self.param])] if given.get(self.param) else []


@dataclass(frozen=True)
class Range:
    low: str
    high: str
    upper: int = 1_000_000

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        return {
            self.low: (int | None, Field(None, ge=0, le=self.upper, description=f"{column.name} at least this")),
            self.high: (int | None, Field(None, ge=0, le=self.upper, description=f"{column.name} at most this")),
        }

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        bounds = ((self.low, ">="), (self.high, "<="))
        return [Clause(column.name, op, int(given[param])) for param, op in bounds if given.get(param) is not None]


@dataclass(frozen=True)
class Period:
    after: str
    before: str

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        return {
            self.after: (datetime | None, Field(None, description="taken at or after this (ISO date or time)")),
            self.before: (datetime | None, Field(None, description="taken before this (ISO date or time)")),
        }

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        bounds = ((self.after, ">="), (self.before, "<"))
        return [
            Clause(column.name, op, wall_clock_seconds(given[param]))
            for param, op in bounds
            if given.get(param) is not None
        ]


@dataclass(frozen=True)
class OneOf:
    param: str
    description: str

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        item = Annotated[str, Field(max_length=column.max_length)]
        return {self.param: (list[item] | None, Field(None, max_length=100, description=self.description))}

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        values = given.get(self.param)
        return [Clause(column.name, "in", tuple(values))] if values is not None else []


@dataclass(frozen=True)
class AnyAll:
    """An array column: rows holding any of some values, and rows holding all of others."""

    any_param: str
    all_param: str

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        item = Annotated[str, Field(min_length=1, max_length=column.max_length)]
        return {
            self.any_param: (
                list[item] | None,
                Field(
                    None,
                    min_length=1,
                    max_length=100,
                    description=f"only images with at least one of these {column.name}",
                ),
            ),
            self.all_param: (
                list[item] | None,
                Field(
                    None, min_length=1, max_length=100, description=f"only images with every one of these {column.name}"
                ),
            ),
        }

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        return [
            Clause(column.name, op, tuple(given[param]))
            for param, op in ((self.any_param, "any"), (self.all_param, "all"))
            if given.get(param)
        ]


@dataclass(frozen=True)
class Flag:
    """A column that an image either has something in or not: ``true`` keeps the rows where it is not empty,
    ``false`` those where it is."""

    param: str
    description: str

    def fields(self, column: Column) -> dict[str, Any]:  # pragma: no mutate block (runs at import, see below)
        return {self.param: (bool | None, Field(None, description=self.description))}

    def clauses(self, column: Column, given: dict[str, Any]) -> list[Clause]:
        wanted = given.get(self.param)
        return [Clause(column.name, "filled", bool(wanted))] if wanted is not None else []


class DataType(enum.IntEnum):
    """The Milvus types the columns use, with pymilvus' own numbers (equal to ``pymilvus.DataType``'s): declared here
    so that reading the columns (the CLI's filter flags, a request's filter) does not import pymilvus."""

    INT64 = 5
    FLOAT = 10
    VARCHAR = 21
    ARRAY = 22
    FLOAT_VECTOR = 101
    SPARSE_FLOAT_VECTOR = 104

    def to_milvus(self) -> Any:
        from pymilvus import DataType as MilvusType

        return MilvusType(int(self))


@dataclass(frozen=True)
class Column:
    name: str
    dtype: DataType
    fill: Callable[[FileFacts], Any]
    max_length: int = 0  # VARCHAR, and an ARRAY of VARCHAR
    filter: Prefix | Range | Period | OneOf | AnyAll | Flag | None = None
    since: int = 1  # the schema version that added it
    element_type: DataType | None = None  # ARRAY only
    max_capacity: int = 0  # ARRAY only
    analyzed: bool = False  # VARCHAR: words Milvus indexes with BM25 (into TEXT_SPARSE)


COLUMNS: tuple[Column, ...] = (
    Column("id", DataType.VARCHAR, lambda f: image_id(f.path), max_length=64),
    Column(
        "path",
        DataType.VARCHAR,
        lambda f: f.path,
        max_length=MAX_PATH,
        filter=Prefix("path_prefix", "only images whose path starts with this"),
    ),
    Column("size", DataType.INT64, lambda f: int(f.size)),
    Column("mtime_ns", DataType.INT64, lambda f: int(f.mtime_ns)),
    Column("content_hash", DataType.VARCHAR, lambda f: f.content_hash, max_length=64),
    Column("width", DataType.INT64, lambda f: int(f.width), filter=Range("min_width", "max_width")),
    Column("height", DataType.INT64, lambda f: int(f.height), filter=Range("min_height", "max_height")),
    Column("indexed_at", DataType.INT64, lambda f: int(time.time())),
    Column(
        "taken_at", DataType.INT64, lambda f: int(f.taken_at), since=2, filter=Period("taken_after", "taken_before")
    ),
    Column("taken_at_source", DataType.VARCHAR, lambda f: f.taken_at_source, max_length=8, since=2),
    Column(
        "format",
        DataType.VARCHAR,
        lambda f: f.format,
        max_length=16,
        since=2,
        filter=OneOf("formats", "only these file formats, as Pillow names them: JPEG, PNG, WEBP ..."),
    ),
    Column("camera_make", DataType.VARCHAR, lambda f: f.camera_make, max_length=64, since=2),
    Column(
        "camera_model",
        DataType.VARCHAR,
        lambda f: f.camera_model,
        max_length=64,
        since=2,
        filter=OneOf("cameras", "only photos from these camera models (EXIF Model), exactly as stored"),
    ),
    Column("gps", DataType.VARCHAR, lambda f: f.gps, max_length=32, since=2),
    # Zero-shot tags, best first, and the score that decided each (imgsearch/labels.py). The indexer
    # fills them from the collection's label sets; `imgsearch tag` rewrites only these two.
    Column(
        "tags",
        DataType.ARRAY,
        lambda f: [],
        max_length=MAX_TAG_CHARS,
        since=3,
        element_type=DataType.VARCHAR,
        max_capacity=MAX_TAGS,
        filter=AnyAll("tags_any", "tags_all"),
    ),
    Column("tag_scores", DataType.ARRAY, lambda f: [], since=3, element_type=DataType.FLOAT, max_capacity=MAX_TAGS),
    # File and folder names, embedded and sidecar descriptions, tags: what hybrid search matches by word.
    Column("text", DataType.VARCHAR, lambda f: f.text, max_length=MAX_TEXT, since=4, analyzed=True),
    # The text read in the picture (imgsearch/ocr), as read, for showing; its words are in ``text`` too. The
    # indexer's text stage fills it after the embedding stage, and reads again when the content hash changes.
    Column(
        "image_text",
        DataType.VARCHAR,
        lambda f: fit_utf8(f.image_text, MAX_IMAGE_TEXT),
        max_length=MAX_IMAGE_TEXT,
        since=5,
        filter=Flag("has_text", "true: only images with text read in them; false: only images without"),
    ),
    Column("text_read_from", DataType.VARCHAR, lambda f: f.text_read_from, max_length=64, since=5),
)
METADATA_FIELDS = [column.name for column in COLUMNS]  # every column but the vector
FILTERABLE = tuple(column for column in COLUMNS if column.filter)


def columns_of(version: int) -> list[str]:
    """The metadata columns a collection of schema ``version`` holds."""
    return [column.name for column in COLUMNS if column.since <= version]


def make_row(facts: FileFacts, vector: Any) -> dict[str, Any]:
    """The row the indexer writes for a file: every column filled from ``facts``, and the vector."""
    return {column.name: column.fill(facts) for column in COLUMNS} | {"vector": vector}


def add_columns(schema: Any, dim: int, bm25: bool = True) -> None:
    """Add every column, the vector, and (``bm25``) the BM25 vector of the analyzed column to a pymilvus
    ``CollectionSchema``."""
    from pymilvus import Function, FunctionType

    for column in COLUMNS:
        extra: dict[str, Any] = {"max_length": column.max_length} if column.max_length else {}
        if column.dtype == DataType.ARRAY:
            extra |= {"element_type": column.element_type.to_milvus(), "max_capacity": column.max_capacity}
        if column.analyzed and bm25:
            extra |= {"enable_analyzer": True}
        schema.add_field(column.name, column.dtype.to_milvus(), is_primary=column.name == "id", **extra)
    schema.add_field("vector", DataType.FLOAT_VECTOR.to_milvus(), dim=dim)
    analyzed = [column.name for column in COLUMNS if column.analyzed]
    if not bm25 or not analyzed:
        return
    schema.add_field(TEXT_SPARSE, DataType.SPARSE_FLOAT_VECTOR.to_milvus())
    schema.add_function(
        Function(
            name="text_bm25",
            function_type=FunctionType.BM25,
            input_field_names=analyzed,
            output_field_names=[TEXT_SPARSE],
        )
    )


# Runs once, at import, before `make mutants` forks a process per mutant: a mutant here could never be active.
def _filter_fields() -> dict[str, Any]:  # pragma: no mutate block
    fields: dict[str, Any] = {}
    for column in FILTERABLE:
        fields |= column.filter.fields(column)
    return fields


SearchFilter: type[BaseModel] = create_model(
    "SearchFilter",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Only images that match every bound given.",
    **_filter_fields(),
)
