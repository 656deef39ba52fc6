"""Tag counts over the whole collection, for the UI's tag filter: from the vector copy when it is fresh, else
read from Milvus once per write (per 10 s on a server, which keeps no generation token)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from imgsearch.search.service import count_tags
from imgsearch.search_api.schemas import TagCountsResponse
from imgsearch.store import MilvusStore
from imgsearch.store.vector_copy import VectorCopy


@dataclass
class TagCounter:
    store: MilvusStore | VectorCopy
    ttl_s: float = 10.0  # on a server
    _cached: tuple[str, float, TagCountsResponse] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def counts(self) -> TagCountsResponse:
        """Blocking: call off the event loop."""
        values = self.store.column("tags") if isinstance(self.store, VectorCopy) else None
        if values is not None:
            return _summary(values)
        with self._lock:  # one read of every row at a time; the others take its result
            token = self.store.generation()
            if self._cached is not None:
                cached_token, at, summary = self._cached
                if (cached_token == token) if token else time.monotonic() - at < self.ttl_s:
                    return summary
            summary = _summary([row["tags"] for row in self.store.iter_rows(fields=["tags"])])
            self._cached = (token, time.monotonic(), summary)
            return summary


def _summary(tag_lists) -> TagCountsResponse:
    return TagCountsResponse(
        images=len(tag_lists), tagged=sum(1 for tags in tag_lists if len(tags)), tags=count_tags(tag_lists)
    )
