"""Decide what an indexing run must do, from the files on disk and the rows in Milvus. Pure logic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imgsearch.indexer.scanner import FileEntry
from imgsearch.media.safe_files import within


@dataclass
class Plan:
    unchanged: list[FileEntry] = field(default_factory=list)
    to_process: list[FileEntry] = field(default_factory=list)  # new or changed: read, hash, maybe embed
    stale: list[dict[str, Any]] = field(default_factory=list)  # rows under the roots whose file is gone
    rows_by_hash: dict[str, dict[str, Any]] = field(default_factory=dict)  # any stored row, by content


def make_plan(
    files: list[FileEntry], stored_rows: Iterable[dict[str, Any]], roots: list[str], keep: Iterable[str] = ()
) -> Plan:
    """Split ``files`` into unchanged (same size and mtime as stored) and to-process; find stale rows.

    Rows under ``keep`` (folders or files the scan could not look at) are never stale.
    """
    keep = list(keep)
    plan = Plan()
    stored_by_path: dict[str, dict[str, Any]] = {}
    for row in stored_rows:
        stored_by_path[row["path"]] = row
        plan.rows_by_hash.setdefault(row["content_hash"], row)
    on_disk = set()
    for entry in files:
        on_disk.add(entry.path)
        row = stored_by_path.get(entry.path)
        if row is not None and row["size"] == entry.size and row["mtime_ns"] == entry.mtime_ns:
            plan.unchanged.append(entry)
        else:
            plan.to_process.append(entry)
    plan.stale = [
        row
        for path, row in stored_by_path.items()
        if path not in on_disk and within(path, roots) and not within(path, keep)
    ]
    return plan
