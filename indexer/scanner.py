"""Find image files under the roots a user names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imgsearch_core.errors import ImgsearchError
from imgsearch_core.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int


class RootNotFoundError(ImgsearchError):
    def __init__(self, root: str):
        super().__init__(f"{root}: no such file or directory")
        self.root = root


def resolve_roots(roots: list[str]) -> list[str]:
    """Absolute, existing roots; raises RootNotFoundError for one that does not exist."""
    resolved = []
    for root in roots:
        path = Path(root).expanduser()
        if not path.exists():
            raise RootNotFoundError(root)
        resolved.append(str(path.resolve()))
    return resolved


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def scan(roots: list[str]) -> list[FileEntry]:
    """Every image file below the (resolved) roots, each once, in a stable order."""
    found: dict[str, FileEntry] = {}
    for root in roots:
        if os.path.isfile(root):
            paths = [root] if is_image_path(root) else []
        else:
            paths = _walk(root)
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:
                continue  # vanished or unreadable between listing and stat
            found[path] = FileEntry(path, stat.st_size, stat.st_mtime_ns)
    return [found[p] for p in sorted(found)]


def _walk(root: str) -> list[str]:
    paths = []
    for directory, subdirs, files in os.walk(root, onerror=None, followlinks=False):
        subdirs.sort()
        paths.extend(os.path.join(directory, name) for name in files if is_image_path(name))
    return paths


def under_roots(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
