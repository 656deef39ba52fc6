"""The labelled images an evaluation reads: a folder of class subfolders, and/or a CSV of image,caption rows."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from imgsearch.errors import ImgsearchError
from imgsearch.indexer.scanner import is_image_path


class EvaluationDataError(ImgsearchError):
    """The labelled data cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class ClassFolder:
    """Images with a class each: ``paths[i]`` is of class ``class_names[labels[i]]``."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]


@dataclass(frozen=True)
class Captions:
    """Captioned images: caption ``captions[j]`` describes ``paths[images[j]]``."""

    paths: list[str]
    captions: list[str]
    images: list[int]


def class_name(folder: str) -> str:
    """A class's name in prompts, from its folder's: ``golden_retriever`` -> ``golden retriever``."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def read_class_folder(root: str | Path) -> ClassFolder:
    """Every image under each subfolder of ``root`` (at any depth), labelled by the subfolder's name."""
    root = Path(root).resolve()  # absolute, as caption paths are, so an image in both is one image
    if not root.is_dir():
        raise EvaluationDataError(f"{root}: not a folder (give a folder with one subfolder of images per class)")
    paths, labels, names = [], [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        found = sorted(
            str(Path(folder) / name)
            for folder, dirs, files in os.walk(entry)
            for name in files
            if is_image_path(name) and not name.startswith(".")
        )
        if found:
            labels += [len(names)] * len(found)
            paths += found
            names.append(class_name(entry.name))
    if len(names) < 2:
        raise EvaluationDataError(
            f"{root}: found {len(names)} class folder(s) with images; zero-shot "
            "classification needs at least 2 (one subfolder of images per class)"
        )
    return ClassFolder(paths, labels, names)


def read_captions(path: str | Path) -> Captions:
    """``image,caption`` rows (a header row of those words is allowed); image paths are relative to the CSV's
    folder. An image may have several rows."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationDataError(f"{path}: cannot read it ({exc})") from None
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["image", "caption"]:
        rows = rows[1:]
    paths: list[str] = []
    position: dict[str, int] = {}
    captions, images = [], []
    for number, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise EvaluationDataError(f"{path}, row {number}: expected 'image,caption', got {row!r}")
        image = str((path.parent / row[0].strip()).resolve())
        if not os.path.isfile(image):
            raise EvaluationDataError(f"{path}, row {number}: no image at {image}")
        if image not in position:
            position[image] = len(paths)
            paths.append(image)
        captions.append(row[1].strip())
        images.append(position[image])
    if not captions:
        raise EvaluationDataError(f"{path}: no image,caption rows")
    return Captions(paths, captions, images)
