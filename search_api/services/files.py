"""The originals the API may serve: regular files whose real path lies inside a root that was indexed.

The roots are the ones the indexer recorded with the collection, plus ``IMGSEARCH_ALLOWED_ROOTS``. They are
read again when a path falls outside the known ones, since another process may have indexed a new root.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

from imgsearch.media.safe_files import OutsideRootsError, open_regular, read_opened
from imgsearch.store import MilvusStore


class ServedFiles:
    def __init__(self, store: MilvusStore, allowed_roots: list[Path], max_bytes: int):
        self._store = store
        self._allowed = [str(Path(root).expanduser().resolve()) for root in allowed_roots]
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._roots: list[str] | None = None

    def roots(self, refresh: bool = False) -> list[str]:
        with self._lock:
            if self._roots is None or refresh:
                self._roots = sorted(set(self._store.indexed_roots()) | set(self._allowed))
            return self._roots

    def open(self, path: str) -> tuple[BinaryIO, int]:
        """(file, size) of an indexed original; raises UnsafeFileError or OSError (FileNotFoundError if gone)."""
        try:
            return open_regular(path, self.roots(), self.max_bytes)
        except OutsideRootsError:
            return open_regular(path, self.roots(refresh=True), self.max_bytes)

    def read(self, path: str) -> bytes:
        handle, _size = self.open(path)
        return read_opened(handle, path, self.max_bytes)
