"""Whether a path that is gone may sweep its rows: the safety rules of ``imgsearch index``, for a watcher.

A root that is missing or empty, or a folder under it that is now empty while it held images, is what an unmounted
share looks like: nothing under it is swept, and a watcher never prunes. An ordinary deletion (the folder that held
the file still has something in it) sweeps the file's row.
"""

from __future__ import annotations

import os

from imgsearch.media.safe_files import within


def root_problem(root: str) -> str | None:
    """Why nothing under ``root`` may be swept now, or None: the root is missing, not a folder, or empty."""
    try:
        if not os.path.isdir(root):
            return "missing (an unmounted share looks like this): what is indexed under it is kept"
        with os.scandir(root) as entries:
            if next(entries, None) is None:
                return "empty (an unmounted share looks like this): what is indexed under it is kept"
    except OSError as exc:
        return f"cannot be listed ({exc.strerror or exc}): what is indexed under it is kept"
    return None


def may_sweep(path: str, root: str) -> bool:
    """True if the rows at or under ``path`` (gone, below ``root``) may be swept: the root is there and not empty,
    and the nearest folder above ``path`` that still exists is the root or has something in it."""
    if not within(path, [root]) or path == root or root_problem(root) is not None:
        return False
    folder = os.path.dirname(path)
    while folder != root and not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if folder == root:
        return True
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False
