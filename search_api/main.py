"""The FastAPI app: heavy things made once in the lifespan, routes wired, errors mapped to HTTP."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from imgsearch_core.encoder import Embedder, load_embedder
from imgsearch_core.settings import Settings, get_settings
from imgsearch_core.store import MilvusStore, release_hosted
from imgsearch_core.store.vector_copy import VectorCopy
from search_api.deps import SettingsDep, StoreDep, has_api_key, require_api_key
from search_api.http_errors import BodySizeLimit, install_error_handlers
from search_api.routes import duplicates, images, indexing, search, tags
from search_api.schemas import HealthResponse
from search_api.services.batching import TextBatcher
from search_api.services.files import ServedFiles
from search_api.services.jobs import JobManager
from search_api.services.search import SearchService
from search_api.services.tags import TagCounter
from search_api.services.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

UPLOADS_DECODED_AT_ONCE = 2  # with IMGSEARCH_MAX_DECODED_MB, bounds the memory uploads can take


def create_app(settings: Settings | None = None, encoder: Embedder | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = encoder or await run_in_threadpool(load_embedder, settings)
        store = await run_in_threadpool(MilvusStore.from_settings, settings)
        await run_in_threadpool(store.ensure_collection, model.name, model.dim, model.fingerprint)  # fails on a model mismatch
        await run_in_threadpool(_warm_up, model)
        app.state.settings = settings
        app.state.encoder = model
        app.state.store = store
        vector_copy = None
        if settings.vector_cache == "on" or (settings.vector_cache == "auto" and store.is_embedded):
            vector_copy = VectorCopy(store, model.dim)
            vector_copy.start()
        app.state.vector_copy = vector_copy
        batcher = TextBatcher(model)
        app.state.search_service = SearchService(model, vector_copy or store, batcher)
        app.state.thumbnails = ThumbnailCache(settings.thumbnail_dir, settings.max_image_pixels,
                                              settings.max_decoded_bytes, settings.thumbnail_cache_mb * 1024 * 1024)
        app.state.upload_slots = asyncio.Semaphore(UPLOADS_DECODED_AT_ONCE)
        app.state.files = ServedFiles(store, settings.allowed_roots, settings.max_file_bytes)
        app.state.jobs = JobManager(settings, model, store)
        app.state.tag_counter = TagCounter(vector_copy or store)
        yield
        app.state.jobs.shutdown()
        batcher.close()
        if vector_copy is not None:
            vector_copy.stop()
        store.close()
        # Here, not only at exit: uvicorn re-raises SIGTERM after shutdown, and atexit handlers never run.
        release_hosted(settings.milvus_uri)

    keyed = bool(settings.api_key)
    app = FastAPI(
        title="imgsearch",
        version="0.1.0",
        description="Semantic image search: text, example images and combinations, over a Milvus collection.",
        lifespan=lifespan,
        # With a key, the schema and its pages are served below only to callers that present it.
        docs_url=None if keyed else "/docs", redoc_url=None if keyed else "/redoc",
        openapi_url=None if keyed else "/openapi.json",
    )
    protected = [Depends(require_api_key)]
    app.include_router(search.router, dependencies=protected)
    app.include_router(images.router, dependencies=protected)
    app.include_router(indexing.router, dependencies=protected)
    app.include_router(tags.router, dependencies=protected)
    app.include_router(duplicates.router, dependencies=protected)
    if keyed:
        _add_protected_docs(app, protected)

    @app.get("/health", response_model=HealthResponse, response_model_exclude_none=True, tags=["health"])
    async def health(request: Request, store: StoreDep, settings: SettingsDep) -> HealthResponse:
        if not has_api_key(request, settings):
            return HealthResponse(status="ok")  # alive, and nothing more, to a caller without the key
        model = request.app.state.encoder
        vector_copy = request.app.state.vector_copy
        count = await run_in_threadpool((vector_copy or store).count)
        cache = "off" if vector_copy is None else ("fresh" if vector_copy.fresh else "catching-up")
        return HealthResponse(status="ok", model=model.name, dim=model.dim, count=count, vector_cache=cache)

    install_error_handlers(app)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, slack=64 * 1024)
    return app


def _add_protected_docs(app: FastAPI, protected: list) -> None:
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    async def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=protected)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="imgsearch")

    @app.get("/redoc", include_in_schema=False, dependencies=protected)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title="imgsearch")


def _warm_up(encoder: Embedder) -> None:
    from PIL import Image

    encoder.embed_images([Image.new("RGB", (encoder.image_size, encoder.image_size))])
    encoder.embed_texts(["warm up"])


def serve(settings: Settings) -> None:
    import uvicorn

    store = MilvusStore.from_settings(settings)  # refuse an old schema with its message, not a traceback
    try:
        if store.exists() or store.finish_interrupted_switch():
            store.check_schema()
    finally:
        store.close()

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
