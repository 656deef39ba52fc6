"""The collection's columns, declared once.

Each column says its Milvus type, how the indexer fills it from a file, and whether searches can filter on it.
The schema, the rows the indexer writes, the request filter model (and so the OpenAPI schema), the Milvus
expression and the vector copy's columns are all read from ``COLUMNS``.

Adding a filterable column: declare it here, fill it where the file is read (``FileFacts``, filled in
``indexer/runner.py``), and show it in the UI. The rest follows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pymilvus import DataType

MAX_PATH = 4096  # the longest path a row holds


def image_id(path: str) -> str:
    """Stable row id for a file path (16 hex chars of sha1; collisions negligible at library scale)."""
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class FileFacts:
    """What the indexer knows about one file when it writes its row."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int


@dataclass(frozen=True)
class Column:
    name: str
    dtype: DataType
    fill: Callable[[FileFacts], Any]
    max_length: int = 0  # VARCHAR only
    filter: Literal["prefix", "range"] | None = None  # prefix: `{name}_prefix`; range: `min_{name}`, `max_{name}`
    upper: int = 1_000_000  # largest bound a range filter accepts
    description: str = ""


COLUMNS: tuple[Column, ...] = (
    Column("id", DataType.VARCHAR, lambda f: image_id(f.path), max_length=64),
    Column("path", DataType.VARCHAR, lambda f: f.path, max_length=MAX_PATH, filter="prefix",
           description="only images whose path starts with this"),
    Column("size", DataType.INT64, lambda f: int(f.size)),
    Column("mtime_ns", DataType.INT64, lambda f: int(f.mtime_ns)),
    Column("content_hash", DataType.VARCHAR, lambda f: f.content_hash, max_length=64),
    Column("width", DataType.INT64, lambda f: int(f.width), filter="range", description="pixels"),
    Column("height", DataType.INT64, lambda f: int(f.height), filter="range", description="pixels"),
    Column("indexed_at", DataType.INT64, lambda f: int(time.time())),
)
METADATA_FIELDS = [column.name for column in COLUMNS]  # every column but the vector
FILTERABLE = tuple(column for column in COLUMNS if column.filter)


def make_row(facts: FileFacts, vector: Any) -> dict[str, Any]:
    """The row the indexer writes for a file: every column filled from ``facts``, and the vector."""
    return {column.name: column.fill(facts) for column in COLUMNS} | {"vector": vector}


def add_columns(schema: Any, dim: int) -> None:
    """Add every column and the vector to a pymilvus ``CollectionSchema``."""
    for column in COLUMNS:
        extra = {"max_length": column.max_length} if column.dtype == DataType.VARCHAR else {}
        schema.add_field(column.name, column.dtype, is_primary=column.name == "id", **extra)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)


# Runs once, at import, before `make mutants` forks a process per mutant: a mutant here could never be active.
def _filter_fields() -> dict[str, Any]:  # pragma: no mutate block
    fields: dict[str, Any] = {}
    for column in FILTERABLE:
        if column.filter == "prefix":
            fields[f"{column.name}_prefix"] = (str | None, Field(None, max_length=MAX_PATH, description=column.description))
        else:
            for side, word in (("min", "at least"), ("max", "at most")):
                fields[f"{side}_{column.name}"] = (int | None, Field(
                    None, ge=0, le=column.upper, description=f"{column.name} {word} this ({column.description})"))
    return fields


SearchFilter: type[BaseModel] = create_model(
    "SearchFilter", __config__=ConfigDict(extra="forbid"), __doc__="Only images that match every bound given.",
    **_filter_fields(),
)
