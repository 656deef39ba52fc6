"""The FastAPI app factory: routers, error mapping and middleware around the lifespan (lifespan.py); ``serve``
runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from imgsearch.model.embedder import Embedder
from imgsearch.search_api.connections import DeadlineProtocol, raise_open_file_limit
from imgsearch.search_api.deps import require_api_key
from imgsearch.search_api.http_errors import BodySizeLimit, install_error_handlers
from imgsearch.search_api.lifespan import lifespan
from imgsearch.search_api.routes import duplicates, health, images, indexing, search, tags, watch
from imgsearch.search_api.services.watch import WatchService
from imgsearch.settings import Settings, get_settings
from imgsearch.store import MilvusStore


def create_app(
    settings: Settings | None = None, encoder: Embedder | None = None, watch_roots: list[str] | None = None
) -> FastAPI:
    """The API for ``settings`` (else the environment's); ``encoder``, a model already loaded, skips loading one;
    ``watch_roots``: folders to watch (docs/watching.md)."""
    settings = settings or get_settings()
    keyed = bool(settings.api_key)
    app = FastAPI(
        title="imgsearch",
        version="0.1.0",
        description="Semantic image search: text, example images and combinations, over a Milvus collection.",
        lifespan=lifespan_and_watching,
        # With a key, the schema and its pages are served below only to callers that present it.
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
        openapi_url=None if keyed else "/openapi.json",
    )
    app.state.settings = settings
    app.state.given_encoder = encoder
    app.state.watch_roots = list(watch_roots or [])
    app.state.index_id = settings.index_id  # resolved once, not at every /health
    protected = [Depends(require_api_key)]
    for module in (search, images, indexing, tags, duplicates, watch):
        app.include_router(module.router, dependencies=protected)
    app.include_router(health.router)
    if keyed:
        _add_protected_docs(app, protected)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, slack=64 * 1024)
    return app


@asynccontextmanager
async def lifespan_and_watching(app: FastAPI) -> AsyncIterator[None]:
    """The lifespan, and once it has opened everything, the watcher of ``app.state.watch_roots`` (if any): it queues
    its runs as jobs (``app.state.jobs``) and stops before they shut down."""
    async with lifespan(app):
        app.state.watch = None
        if app.state.watch_roots:
            app.state.watch = WatchService(app.state.watch_roots, app.state.settings, app.state.jobs)
            app.state.watch.start()
        try:
            yield
        finally:
            if app.state.watch is not None:
                app.state.watch.stop()


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


def serve(settings: Settings, watch_roots: list[str] | None = None) -> None:
    import uvicorn

    store = MilvusStore.from_settings(settings)  # refuse an old schema with its message, not a traceback
    try:
        if store.exists() or store.finish_interrupted_switch():
            store.check_schema()
    finally:
        store.close()

    raise_open_file_limit()
    uvicorn.run(
        create_app(settings, watch_roots=watch_roots),
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=DeadlineProtocol,
    )  # a client that stops moving its request along is let go
