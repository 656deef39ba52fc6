"""JPEG thumbnails, made on first request and kept on disk, in a folder of bounded size."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from imgsearch.media.images import decode_image
from imgsearch.media.safe_files import private_dir, read_own_file

# Requested sizes snap up to one of these, so a client cannot fill the cache with one file per pixel size.
SIZE_BUCKETS = (64, 128, 256, 512, 1024)
MAX_THUMBNAIL_BYTES = 8 * 1024 * 1024  # a 1024-px JPEG is far smaller; a larger cache file was not ours


def bucket(size: int) -> int:
    return next((b for b in SIZE_BUCKETS if b >= size), SIZE_BUCKETS[-1])


class ThumbnailCache:
    def __init__(self, folder: Path, max_pixels: int, max_decoded_bytes: int, max_bytes: int):
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(2)  # like uploads: memory stays bounded under many requests
        self._total: int | None = None  # bytes in the folder, counted on first write

    def get(self, image_id: str, content_hash: str, size: int, read: Callable[[], bytes]) -> bytes:
        """The thumbnail bytes, longest side ``bucket(size)``; ``read`` gives the original's bytes.

        Raises what ``read`` raises, or ImageDecodeError.
        """
        size = bucket(size)
        cached = self.folder / f"{image_id}-{content_hash[:12]}-{size}.jpg"
        try:
            data = read_own_file(cached, MAX_THUMBNAIL_BYTES)
            _touch(cached)  # eviction takes the least recently used first
            return data
        except FileNotFoundError:
            pass
        with self._decoding:
            decoded = decode_image(read(), image_id, size, self.max_pixels, self.max_decoded_bytes)
        image = decoded.image
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        self._store(cached, data)
        return data

    def _store(self, cached: Path, data: bytes) -> None:
        private_dir(self.folder)  # refuses a folder of another user
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"  # unique: concurrent makers never share a file
        tmp.write_bytes(data)
        os.replace(tmp, cached)  # atomic: every reader sees a whole JPEG
        _touch(cached)
        with self._lock:
            if self._total is None:
                self._total = self._folder_bytes()
            else:
                self._total += len(data)
            if self._total > self.max_bytes:
                self._total = self._evict(keep=cached)

    def _folder_bytes(self) -> int:
        return sum(entry.stat().st_size for entry in os.scandir(self.folder) if entry.name.endswith(".jpg"))

    def _evict(self, keep: Path) -> int:
        """Delete the least recently used thumbnails until the folder is at 3/4 of the bound; returns its size."""
        entries = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".jpg"):
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((info.st_mtime_ns, info.st_size, entry.path))
        total = sum(size for _mtime, size, _path in entries)
        for _mtime, size, path in sorted(entries):
            if total <= self.max_bytes * 3 // 4:
                break
            if path == str(keep):
                continue
            try:
                os.unlink(path)
                total -= size
            except FileNotFoundError:
                pass
        return total


def _touch(path: Path) -> None:
    """Mark ``path`` used now, to the nanosecond (file systems stamp new files with a coarser clock)."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):  # evicted by a concurrent request meanwhile
        os.utime(path, ns=(now, now))
