"""Find image files under the roots a user names, and say what could not be looked at.

Rules (README "Security" states them for users):
- a symbolic link to a file is followed only when its target lies inside one of the run's roots;
- symbolic links to folders are not descended into;
- only regular files are taken: a FIFO, socket or device named ``*.jpg`` is skipped with a reason;
- a file over ``max_bytes`` is skipped with a reason;
- a file name that is not valid UTF-8 is skipped with a reason (Milvus stores text as UTF-8);
- a folder or file that cannot be listed or looked at is reported, and everything indexed below it is kept.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from imgsearch.errors import ImgsearchError
from imgsearch.media.images import IMAGE_EXTENSIONS
from imgsearch.media.safe_files import UnsafeFileError, check_regular, printable, within


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}, reported to the user
    keep: list[str] = field(default_factory=list)  # folders and files that could not be looked at: rows kept


class RootNotFoundError(ImgsearchError):
    def __init__(self, root: str, indexed: int = 0):
        hint = (
            f"; {indexed} images indexed under it are kept. If it was removed on purpose, run again with "
            f"--prune to drop them"
            if indexed
            else ""
        )
        super().__init__(f"{root}: no such file or directory{hint}")
        self.root = root


def resolve_roots(roots: list[str], allow_missing: bool = False) -> list[str]:
    """Absolute real paths of ``roots``; raises RootNotFoundError for a missing one unless ``allow_missing``."""
    resolved = []
    for root in roots:
        path = Path(root).expanduser()
        if not path.exists() and not allow_missing:
            raise RootNotFoundError(root)
        resolved.append(str(path.resolve()))
    return resolved


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def scan(roots: list[str], max_bytes: int, trusted: list[str] | None = None) -> ScanResult:
    """Every image file below the (resolved) roots, each once, in a stable order, and the problems met.

    ``trusted``: the folders a symbolic link may point into, when they are wider than ``roots`` (a watcher scans
    a few changed paths under the roots it watches); by default the roots themselves."""
    trusted = roots if trusted is None else trusted
    result = ScanResult()
    found: dict[str, FileEntry] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue  # a missing root is the caller's decision (see run_index)
        paths = [root] if not os.path.isdir(root) else _walk(root, result)
        for path in paths:
            entry = _look_at(path, trusted, max_bytes, result)
            if entry is not None:
                found[path] = entry
    result.files = [found[p] for p in sorted(found)]
    return result


def _walk(root: str, result: ScanResult) -> list[str]:
    def unlistable(error: OSError) -> None:
        where = error.filename or root
        result.failed.append(
            {
                "path": printable(where),
                "reason": f"cannot list folder: {error.strerror or error}; what is indexed below it is kept",
            }
        )
        result.keep.append(where)

    paths = []
    for directory, subdirs, files in os.walk(root, onerror=unlistable, followlinks=False):
        subdirs.sort()
        paths.extend(os.path.join(directory, name) for name in files if is_image_path(name))
    return paths


def _look_at(path: str, roots: list[str], max_bytes: int, result: ScanResult) -> FileEntry | None:
    def skip(reason: str, keep_rows: bool = False) -> None:
        result.failed.append({"path": printable(path), "reason": reason})
        if keep_rows:
            result.keep.append(path)

    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        skip("the file name is not valid UTF-8; rename the file to index it")
        return None
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(path)
            if not within(target, roots):
                skip(f"symbolic link to {printable(target)}, outside the indexed folders; not followed")
                return None
            info = os.stat(path)
    except FileNotFoundError:
        skip("broken symbolic link" if os.path.islink(path) else "vanished while scanning")
        return None
    except OSError as exc:
        skip(f"cannot look at the file: {exc.strerror or exc}; what is indexed for it is kept", keep_rows=True)
        return None
    try:
        check_regular(path, info, max_bytes)
    except UnsafeFileError as exc:
        skip(exc.reason, keep_rows=stat.S_ISREG(info.st_mode))  # too large now: keep what was indexed
        return None
    return FileEntry(path, info.st_size, info.st_mtime_ns)
