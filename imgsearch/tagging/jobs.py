"""``imgsearch tag``: tag every stored image from its stored vector, and export the top images of each label.

No file is read and no image embedded again: the pass reads the vectors from Milvus in batches, multiplies
them with the label embeddings, and writes back only the tags of the images whose tags changed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.model.embedder import Embedder
from imgsearch.store import MilvusStore
from imgsearch.tagging.labels import LabelSet, TopImages, encode
from imgsearch.tagging.tagger import Tagger, stored_label_sets

READ_BATCH = 2000
EXPORT_INDEX = "imgsearch-export.json"  # marks a folder as an export, so a later export may replace it


class ExportFolderError(ImgsearchError):
    def __init__(self, folder: str, reason: str):
        super().__init__(f"{folder}: {reason}")


@dataclass
class Export:
    folder: Path
    k: int = 100  # images per label
    links: bool = False  # also a folder of symlinks per label


@dataclass
class TagReport:
    label_set: str | None
    images: int = 0  # images looked at
    tagged: int = 0  # of those, images with at least one tag
    updated: int = 0  # images whose tags changed and were written
    label_sets: list[str] = field(default_factory=list)  # every set the tags now come from
    counts: dict[str, int] = field(default_factory=dict)  # images per label of ``label_set`` (all labels if None)
    exported: str | None = None
    elapsed_s: float = 0.0


def save_label_set(store: MilvusStore, label_set: LabelSet) -> None:
    store.put_label_set(label_set.name, encode(label_set))


def remove_label_set(store: MilvusStore, name: str) -> bool:
    """Forget the set ``name``; False if there is none. Its tags go at the next tagging pass."""
    if name not in store.label_sets():
        return False
    store.put_label_set(name, "")
    return True


def run_tagging(
    store: MilvusStore,
    encoder: Embedder,
    focus: LabelSet | None = None,
    export: Export | None = None,
    dry_run: bool = False,
    show_progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> TagReport:
    """Give every image the tags of the collection's label sets (``focus`` in place of a stored set of its
    name, when given; with ``dry_run`` nothing is written). ``export``: the top images of each of ``focus``'s
    labels."""
    started = time.monotonic()
    sets = [s for s in stored_label_sets(store) if focus is None or s.name != focus.name]
    sets += [focus] if focus is not None else []
    tagger = Tagger(encoder, sets)
    report = TagReport(focus.name if focus else None, label_sets=[s.name for s in sets])
    if export is not None:
        if focus is None:
            raise ValueError("an export needs the label set whose labels it lists")
        check_export_folder(export.folder)
    top = TopImages(len(focus.labels), export.k) if export is not None else None
    paths: list[str] = []
    counts: Counter[str] = Counter()
    total = store.count()
    bar = _bar(total) if show_progress else None
    if on_progress:
        on_progress(0, total)
    try:
        batch: list[dict[str, Any]] = []
        rows = store.iter_rows(
            fields=["id", "path", "tags", "tag_scores", "text"], with_vectors=True, batch_size=READ_BATCH
        )
        for row in rows:
            batch.append(row)
            if len(batch) >= READ_BATCH:
                _tag_batch(batch, store, tagger, top, paths, counts, report, dry_run)
                batch = []
                _advance(bar, on_progress, report.images, total)
        _tag_batch(batch, store, tagger, top, paths, counts, report, dry_run)
        _advance(bar, on_progress, report.images, total)
    finally:
        if bar is not None:
            bar.close()
    if report.updated and not dry_run:
        store.flush()
    wanted = focus.names if focus is not None else sorted(counts)
    report.counts = {name: counts.get(name, 0) for name in wanted}
    if top is not None:
        write_export(export, focus, top, paths)
        report.exported = str(export.folder)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def _tag_batch(batch, store, tagger, top, paths, counts, report, dry_run) -> None:
    if not batch:
        return
    vectors = np.asarray([row["vector"] for row in batch], dtype=np.float32)
    similarities = tagger.similarities(vectors)
    changed = {}
    for row, tags in zip(batch, tagger.tags(vectors, similarities)):
        counts.update(tags.names)
        report.tagged += bool(tags.names)
        if tags.names != list(row["tags"]) or not np.allclose(tags.scores, row["tag_scores"], atol=1e-4):
            changed[row["id"]] = (tags.names, tags.scores, row["text"])
    report.images += len(batch)
    report.updated += len(changed) if dry_run else store.set_tags(changed)
    if top is not None:
        top.add([row["id"] for row in batch], similarities[-1])
        paths.extend(row["path"] for row in batch)


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="tagging", file=sys.stderr)  # pragma: no mutate


def _advance(bar, on_progress, done: int, total: int) -> None:
    if bar is not None:
        bar.update(done - bar.n)
    if on_progress:
        on_progress(done, max(done, total))


# ── Export ────────────────────────────────────────────────────────────────────────────────────────────────


def check_export_folder(folder: Path) -> None:
    """An export goes into a new or empty folder, or replaces an earlier export: never over other files."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ExportFolderError(str(folder), "not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / EXPORT_INDEX).is_file():
        raise ExportFolderError(str(folder), "not empty, and not an earlier imgsearch export; give a new folder")


def file_names(labels: list[str]) -> list[str]:
    """A file name for each label: its characters that are safe anywhere, unique without regard to case."""
    names, taken = [], {EXPORT_INDEX.removesuffix(".json")}
    for i, label in enumerate(labels):
        base = re.sub(r"[^\w ,()+-]", "_", label).strip(" ._")[:100] or f"label-{i + 1}"
        name, n = base, 2
        while name.casefold() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.casefold())
        names.append(name)
    return names


def write_export(export: Export, label_set: LabelSet, top: TopImages, paths: list[str]) -> None:
    """Per label: ``<label>.csv`` and ``<label>.json`` (rank, score, id, path), and with ``links`` a folder
    ``<label>/`` of symlinks named by rank; ``imgsearch-export.json`` lists them all."""
    folder = export.folder
    check_export_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = file_names(label_set.names)
    index = {"label_set": label_set.name, "k": export.k, "score": "cosine similarity of image and label", "labels": {}}
    for label, name, ranked in zip(label_set.names, names, top.ranked()):
        images = [
            {"rank": rank, "score": round(score, 6), "id": top.ids[row], "path": paths[row]}
            for rank, (row, score) in enumerate(ranked, start=1)
        ]
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["rank", "score", "id", "path"])
            writer.writeheader()
            writer.writerows(images)
        (folder / f"{name}.json").write_text(
            json.dumps({"label": label, "images": images}, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        if export.links:
            _link_folder(folder / name, images)
        index["labels"][label] = name
    (folder / EXPORT_INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")


def _link_folder(folder: Path, images: list[dict[str, Any]]) -> None:
    if folder.is_dir() and not folder.is_symlink():
        for old in folder.iterdir():  # an earlier export's links: only links are removed, never files
            if old.is_symlink():
                old.unlink()
    folder.mkdir(exist_ok=True)
    width = len(str(len(images)))
    for image in images:
        link = folder / f"{image['rank']:0{width}d}_{os.path.basename(image['path'])}"
        os.symlink(image["path"], link)
