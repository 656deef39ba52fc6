"""The FastAPI app: heavy things made once in the lifespan, routes wired, errors mapped to HTTP."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from imgsearch.model.embedder import Embedder
from imgsearch.model.loading import load_embedder
from imgsearch.search_api.connections import DeadlineProtocol, raise_open_file_limit
from imgsearch.search_api.deps import SettingsDep, StoreDep, has_api_key, require_api_key
from imgsearch.search_api.http_errors import BodySizeLimit, install_error_handlers
from imgsearch.search_api.routes import duplicates, images, indexing, search, tags
from imgsearch.search_api.schemas import HealthResponse
from imgsearch.search_api.services.jobs import JobManager
from imgsearch.search_api.services.serving import Serving, Switcher, collection_model, open_serving
from imgsearch.search_api.services.thumbnails import ThumbnailCache
from imgsearch.settings import Settings, get_settings
from imgsearch.store import MilvusStore, release_hosted

log = logging.getLogger(__name__)

UPLOADS_DECODED_AT_ONCE = 2  # with IMGSEARCH_MAX_DECODED_MB, bounds the memory uploads can take


def create_app(settings: Settings | None = None, encoder: Embedder | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        names = await run_in_threadpool(MilvusStore.from_settings, settings)  # the configured name
        model = encoder or await run_in_threadpool(load_embedder, settings.model_copy(
            update={"model": await run_in_threadpool(collection_model, settings, names)}))
        _say_what_runs(model)
        await run_in_threadpool(names.ensure_collection, model.name, model.dim, model.fingerprint)  # fails on a model mismatch
        collection = await run_in_threadpool(names.target)
        serving = await run_in_threadpool(open_serving, settings, names, collection, model)
        app.state.settings = settings
        app.state.upload_slots = asyncio.Semaphore(UPLOADS_DECODED_AT_ONCE)
        app.state.thumbnails = ThumbnailCache(settings.thumbnail_dir, settings.max_image_pixels,
                                              settings.max_decoded_bytes, settings.thumbnail_cache_mb * 1024 * 1024)
        app.state.jobs = JobManager(settings, model, serving.store)
        install(app, serving)
        switcher = Switcher(settings, names, serving, lambda new: install(app, new))
        app.state.switcher = switcher
        switcher.start()
        yield
        switcher.stop()
        app.state.jobs.shutdown()
        switcher.current.close()
        names.close()
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
        return HealthResponse(status="ok", model=model.name, dim=model.dim, runs=f"{model.backend} {model.precision}",
                              count=count, vector_cache=cache,
                              collection=request.app.state.serving.collection,
                              switch=request.app.state.switcher.state)

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


def install(app: FastAPI, serving: Serving) -> None:
    """Make ``serving`` answer the requests that start from now on."""
    app.state.jobs.use(serving.encoder, serving.store)
    app.state.encoder = serving.encoder
    app.state.store = serving.store
    app.state.vector_copy = serving.vector_copy
    app.state.search_service = serving.search_service
    app.state.files = serving.files
    app.state.tag_counter = serving.tag_counter
    app.state.serving = serving


def _say_what_runs(model: Embedder) -> None:
    """One line in the server's log: what runs the model, and what auto measured to choose it."""
    choice = getattr(model, "precision_choice", None)
    logging.getLogger("uvicorn.error").info("imgsearch: %s runs %s %s%s", model.name, model.backend, model.precision,
                                            f" ({choice.describe()})" if choice else "")


def serve(settings: Settings) -> None:
    import uvicorn

    store = MilvusStore.from_settings(settings)  # refuse an old schema with its message, not a traceback
    try:
        if store.exists() or store.finish_interrupted_switch():
            store.check_schema()
    finally:
        store.close()

    raise_open_file_limit()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                http=DeadlineProtocol)  # a client that stops moving its request along is let go
