"""The FastAPI app: heavy things made once in the lifespan, routes wired, errors mapped to HTTP."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch_core.encoder import Encoder
from imgsearch_core.errors import CollectionNotFoundError, ModelMismatchError
from imgsearch_core.milvus_store import MilvusStore
from imgsearch_core.settings import Settings, get_settings
from search_api.deps import SettingsDep, StoreDep, require_api_key
from search_api.routes import images, indexing, search
from search_api.schemas import HealthResponse
from search_api.services.batching import TextBatcher
from search_api.services.jobs import JobManager
from search_api.services.search import ImageNotFoundError, SearchService
from search_api.services.thumbnails import ThumbnailCache
from search_api.services.vector_mirror import VectorMirror

log = logging.getLogger(__name__)


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, counted while streaming (no Content-Length needed)."""

    def __init__(self, app: ASGIApp, limit: int, slack: int = 0):
        self.app = app
        self.limit = limit + slack  # multipart framing adds a little to the file itself
        self.configured = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"upload is over the limit of {self.configured:,} bytes (IMGSEARCH_MAX_UPLOAD_BYTES)"

    async def _too_large(self, send: Send) -> None:
        await JSONResponse({"detail": self._message()}, status_code=413)({"type": "http"}, None, send)


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = encoder or await run_in_threadpool(Encoder.from_settings, settings)
        store = await run_in_threadpool(MilvusStore.from_settings, settings)
        await run_in_threadpool(store.ensure_collection, model.name, model.dim)  # fails on a model mismatch
        await run_in_threadpool(_warm_up, model)
        app.state.settings = settings
        app.state.encoder = model
        app.state.store = store
        mirror = None
        if settings.vector_cache == "on" or (settings.vector_cache == "auto" and store.is_embedded):
            mirror = VectorMirror(store, model.dim)
            mirror.start()
        app.state.mirror = mirror
        batcher = TextBatcher(model)
        app.state.search_service = SearchService(model, store, batcher, mirror)
        app.state.thumbnails = ThumbnailCache(settings.thumbnail_dir, settings.max_image_pixels)
        app.state.jobs = JobManager(settings, model, store)
        yield
        app.state.jobs.shutdown()
        batcher.close()
        if mirror is not None:
            mirror.stop()
        store.close()

    app = FastAPI(
        title="imgsearch",
        version="0.1.0",
        description="Semantic image search: text, example images and combinations, over a Milvus collection.",
        lifespan=lifespan,
    )
    protected = [Depends(require_api_key)]
    app.include_router(search.router, dependencies=protected)
    app.include_router(images.router, dependencies=protected)
    app.include_router(indexing.router, dependencies=protected)

    @app.get("/health", response_model=HealthResponse, tags=["health"])
    async def health(request: Request, store: StoreDep, _settings: SettingsDep) -> HealthResponse:
        model = request.app.state.encoder
        mirror = request.app.state.mirror
        count = mirror.count() if mirror is not None else None
        if count is None:
            count = await run_in_threadpool(store.count)
        cache = "off" if mirror is None else ("fresh" if mirror.fresh else "catching-up")
        return HealthResponse(status="ok", model=model.name, dim=model.dim, count=count, vector_cache=cache)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")})
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors)
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)

    for error_class in ERROR_STATUS:
        app.add_exception_handler(error_class, domain_error)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, slack=64 * 1024)
    return app


# Domain errors and the HTTP status each becomes: the one place that decides, by class, never by message text.
ERROR_STATUS: dict[type[Exception], int] = {
    ImageNotFoundError: 404,
    ModelMismatchError: 409,
    ValueError: 422,  # e.g. query parts that cancel out
    CollectionNotFoundError: 503,
}


def status_for(exc: Exception) -> int:
    """The status of the most specific class in ERROR_STATUS that ``exc`` is an instance of."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    raise LookupError(f"no status for {type(exc).__name__}")


async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


def _warm_up(encoder: Encoder) -> None:
    from PIL import Image

    encoder.embed_images([Image.new("RGB", (encoder.image_size, encoder.image_size))])
    encoder.embed_texts(["warm up"])


def serve(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
