"""Near-duplicate groups across the whole collection (imgsearch/duplicates.py)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from imgsearch.search.duplicates import find_duplicates
from imgsearch.search_api.deps import StoreDep
from imgsearch.search_api.schemas import DuplicatesResponse

router = APIRouter(tags=["duplicates"])
_one_at_a_time = asyncio.Lock()


@router.get("/duplicates", response_model=DuplicatesResponse)
async def duplicates(
    request: Request,
    store: StoreDep,
    threshold: Annotated[float, Query(ge=0.5, le=1.0, description="cosine at which two images count as one")] = 0.95,
) -> DuplicatesResponse:
    """Groups of near-identical images (copies, re-encodes, format changes, resizes), each member with its cosine
    to the group's first image and what differs between the files. Found with the vector index's nearest
    neighbours, not by comparing every pair; remembered until the collection changes."""
    cache = request.app.state.__dict__.setdefault("duplicates_cache", {})
    key = (store.generation() or None, threshold)
    async with _one_at_a_time:  # a second caller waits for the first and then reads its answer
        if key[0] is None or key not in cache:
            report = await run_in_threadpool(find_duplicates, store, threshold)
            cache.clear()
            cache[key] = DuplicatesResponse(**asdict(report))
        return cache[key]
