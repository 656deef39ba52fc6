"""Turn a search request into query vectors and a Milvus filter, run it, shape the hits."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgsearch_core.encoder import Embedder
from imgsearch_core.images import DecodedImage
from imgsearch_core.store import Hit, MilvusStore
from imgsearch_core.store.fields import wall_clock_datetime
from imgsearch_core.store.filters import ImageFilter
from imgsearch_core.store.vector_copy import VectorCopy
from search_api.ranking import SORT_POOL, blend, newest_first
from search_api.schemas import SearchHit, SearchRequest, SearchResponse
from search_api.services.batching import TextBatcher


class ImageNotFoundError(LookupError):
    def __init__(self, image_id: str):
        super().__init__(f"no indexed image with id '{image_id}'")


@dataclass
class SearchService:
    encoder: Embedder
    store: MilvusStore | VectorCopy  # the copy on the embedded default: exact in-memory search
    text_batcher: TextBatcher  # concurrent text queries share one model call
    recheck_s: float = 5.0  # how often to look whether the collection was dropped and made again
    _checked_token: str | None = field(default=None, init=False)
    _checked_at: float = field(default=-1e9, init=False)

    def check_collection(self) -> None:
        """If the collection was re-created since the last look, check its model and weights again.

        Raises ModelMismatchError (409) or CollectionNotFoundError (503). Blocking: call off the event loop.
        """
        token = self.store.creation_token()
        if token != self._checked_token:
            self.store.check_model(self.encoder.name, self.encoder.dim, self.encoder.fingerprint)
            self._checked_token = token
        self._checked_at = time.monotonic()

    async def search(self, request: SearchRequest, uploaded: DecodedImage | None = None) -> SearchResponse:
        started = time.perf_counter()
        if time.monotonic() - self._checked_at >= self.recheck_s:  # no thread hop on the searches in between
            await run_in_threadpool(self.check_collection)
        parts: list[tuple[np.ndarray, float]] = []
        notes: list[str] = []
        texts = [t for t in (request.text, request.negative_text) if t is not None]
        if texts:
            embedded = await self.text_batcher.embed(texts)
            if any(embedded.truncated):
                notes.append(f"text longer than the model's {self.encoder.max_text_tokens}-token limit was truncated")
            vectors = iter(embedded.vectors)
            if request.text is not None:
                parts.append((next(vectors), request.text_weight))
            if request.negative_text is not None:
                parts.append((next(vectors), -request.negative_weight))
        if request.image_id is not None:
            rows = await run_in_threadpool(self.store.get, [request.image_id], True)
            if request.image_id not in rows:
                raise ImageNotFoundError(request.image_id)
            parts.append((np.asarray(rows[request.image_id]["vector"], dtype=np.float32), request.image_weight))
        if uploaded is not None:
            vector = (await run_in_threadpool(self.encoder.embed_images, [uploaded.image]))[0]
            parts.append((vector, request.image_weight))
        query = blend(parts)
        image_filter = ImageFilter.from_request(request.filter)
        if request.sort == "newest":
            best = await run_in_threadpool(self._nearest, query, max(SORT_POOL, request.offset + request.limit), 0,
                                           image_filter)
            hits = newest_first(best, request.offset, request.limit, request.min_score)
        else:
            hits = await run_in_threadpool(self._nearest, query, request.limit, request.offset, image_filter)
        results = [to_hit(hit) for hit in hits if request.min_score is None or hit.score >= request.min_score]
        facets = count_tags(hit.tags for hit in results) if request.facets else None
        return SearchResponse(results=results, took_ms=round((time.perf_counter() - started) * 1000, 2), notes=notes,
                              facets=facets)

    def _nearest(self, query: np.ndarray, limit: int, offset: int, image_filter: ImageFilter) -> list[Hit]:
        return self.store.search(query[None, :], limit, offset, image_filter)[0]


def to_hit(hit: Hit) -> SearchHit:
    row = hit.row
    return SearchHit(
        id=hit.id, path=row["path"], score=round(hit.score, 6), width=row["width"], height=row["height"],
        image_url=f"/images/{hit.id}", thumbnail_url=f"/images/{hit.id}/thumbnail",
        taken_at=wall_clock_datetime(row["taken_at"]), taken_at_source=row["taken_at_source"],
        format=row["format"], camera_make=row["camera_make"], camera_model=row["camera_model"], gps=row["gps"],
        tags=list(row.get("tags") or []), tag_scores=[round(float(v), 4) for v in row.get("tag_scores") or []],
    )


def count_tags(tag_lists: Iterable[Sequence[str]]) -> dict[str, int]:
    """Images per tag, most first (then by name)."""
    counts = Counter(tag for tags in tag_lists for tag in tags)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
