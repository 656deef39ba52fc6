"""GET /health: alive to anyone; to a caller with the key, what runs and how much is indexed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imgsearch.search_api.deps import SettingsDep, StoreDep, has_api_key
from imgsearch.search_api.schemas import HealthResponse
from imgsearch.store.lite import outgrown_advice

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, response_model_exclude_none=True)
async def health(request: Request, store: StoreDep, settings: SettingsDep) -> HealthResponse:
    if not has_api_key(request, settings):
        return HealthResponse(status="ok")  # alive, and nothing more, to a caller without the key
    model = request.app.state.encoder
    vector_copy = request.app.state.vector_copy
    count = await run_in_threadpool((vector_copy or store).count)
    cache = "off" if vector_copy is None else ("fresh" if vector_copy.fresh else "catching-up")
    return HealthResponse(
        status="ok",
        model=model.name,
        dim=model.dim,
        runs=f"{model.backend} {model.precision}",
        text_runs=f"{getattr(model, 'text_backend', model.backend)} {getattr(model, 'text_precision', model.precision)}",
        count=count,
        index_id=request.app.state.index_id,
        vector_cache=cache,
        collection=request.app.state.serving.collection,
        switch=request.app.state.switcher.state,
        advice=outgrown_advice(count) if store.is_embedded else None,
    )
