"""Read image files the way a hostile folder cannot exploit: regular files only, inside trusted roots, capped.

The indexer and the API read every file through :func:`open_regular`, so one rule holds everywhere:

- the file's real path (after every symbolic link) lies inside one of the roots that were indexed;
- it is a regular file, never a FIFO, socket or device, which could block a reader or never end;
- it is at most ``max_bytes`` long (``IMGSEARCH_MAX_FILE_BYTES``).

The checks are made on the opened descriptor (``fstat``, and ``/proc/self/fd`` for the real path), so a link
re-pointed between the check and the read cannot slip another file in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from imgsearch.errors import ImgsearchError

CHUNK_BYTES = 256 * 1024


class UnsafeFileError(ImgsearchError):
    """A file that is not served or read: outside the roots, not a regular file, or too large."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{printable(path)}: {reason}")
        self.path = path
        self.reason = reason


class OutsideRootsError(UnsafeFileError):
    """The file's real path lies outside every trusted root."""


def printable(path: str) -> str:
    """``path`` safe to print and store as UTF-8: undecodable bytes of a file name become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def within(path: str, roots: Iterable[str]) -> bool:
    """True if ``path`` is one of ``roots`` or lies below one (plain string test on absolute paths)."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "a special file"


def check_regular(path: str, info: os.stat_result, max_bytes: int) -> None:
    """Raise UnsafeFileError unless ``info`` (a stat of ``path``) is a regular file of at most ``max_bytes``."""
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(path, f"{kind_of(info.st_mode)}, not a regular file")
    if info.st_size > max_bytes:
        raise UnsafeFileError(
            path, f"{info.st_size:,} bytes is over the limit of {max_bytes:,} (IMGSEARCH_MAX_FILE_BYTES)"
        )


def _real_path_of(fd: int, path: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the path as resolved now
        return os.path.realpath(path)


def open_regular(path: str, roots: Iterable[str], max_bytes: int) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading after the checks above; returns (file, size). Raises UnsafeFileError or OSError."""
    roots = list(roots)
    check_regular(path, os.stat(path), max_bytes)  # never even open a device or FIFO
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        check_regular(path, info, max_bytes)  # swapped for something else since the stat above
        if not within(_real_path_of(fd, path), roots):
            raise OutsideRootsError(path, "its real path lies outside the indexed folders (a symbolic link?)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str, roots: Iterable[str], max_bytes: int) -> bytes:
    """The whole file, checked as :func:`open_regular` does."""
    handle, _size = open_regular(path, roots, max_bytes)
    return read_opened(handle, path, max_bytes)


def read_opened(handle: BinaryIO, path: str, max_bytes: int) -> bytes:
    """Read and close ``handle``; a file that grew past the cap while read is refused too."""
    with handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(path, f"grew over the limit of {max_bytes:,} bytes (IMGSEARCH_MAX_FILE_BYTES) while read")
    return data


def iter_chunks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    """At most ``size`` bytes of an opened file, in chunks, closing it at the end (for streamed responses)."""
    with handle:
        left = size
        while left > 0:
            chunk = handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) for the owner only; an existing one of ours is tightened to 0700.

    Raises UnsafeFileError for a folder of another user or a symbolic link in its place.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeFileError(str(path), "not a folder of this user (or a symbolic link); refusing to use it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def read_own_file(path: Path, max_bytes: int) -> bytes:
    """A file imgsearch wrote itself (a cached thumbnail): never through a link, regular, at most ``max_bytes``.
    Raises FileNotFoundError when absent, UnsafeFileError when it is not what imgsearch would have written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(str(path), "a symbolic link where imgsearch keeps its own files") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        check_regular(str(path), os.fstat(fd), max_bytes)
        return handle.read(max_bytes)


def replace_own_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step: into a new file of this user's alone (0600, never through a link)
    beside it, then renamed over it, so a reader sees the old file or the new one, whole. Raises OSError."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
