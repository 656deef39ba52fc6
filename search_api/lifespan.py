"""What the API holds while it runs: made once at start-up (the model, the store, the vector copy, the job queue),
handed to routes through ``app.state`` (see deps.py), and closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from imgsearch.model.embedder import Embedder
from imgsearch.model.loading import load_embedder
from imgsearch.search_api.services.jobs import JobManager
from imgsearch.search_api.services.serving import Serving, Switcher, collection_model, open_serving
from imgsearch.search_api.services.thumbnails import ThumbnailCache
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore, release_hosted

UPLOADS_DECODED_AT_ONCE = 2  # with IMGSEARCH_MAX_DECODED_MB, bounds the memory uploads can take


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open everything from ``app.state.settings`` (and ``app.state.given_encoder``, a model tests hand in)."""
    settings: Settings = app.state.settings
    names = await run_in_threadpool(MilvusStore.from_settings, settings)  # the configured name
    model = app.state.given_encoder or await run_in_threadpool(
        load_embedder, settings.model_copy(update={"model": await run_in_threadpool(collection_model, settings, names)})
    )
    _say_what_runs(model)
    await run_in_threadpool(
        names.ensure_collection, model.name, model.dim, model.fingerprint
    )  # fails on a model mismatch
    collection = await run_in_threadpool(names.target)
    serving = await run_in_threadpool(open_serving, settings, names, collection, model)
    app.state.upload_slots = asyncio.Semaphore(UPLOADS_DECODED_AT_ONCE)
    app.state.thumbnails = ThumbnailCache(
        settings.thumbnail_dir,
        settings.max_image_pixels,
        settings.max_decoded_bytes,
        settings.thumbnail_cache_mb * 1024 * 1024,
    )
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
    _tune_text_later(serving.encoder, app.state.jobs)


IDLE_POLL_S = 2.0


def _tune_text_later(model: Embedder, jobs: JobManager) -> None:
    """Measure the text tower's settings for queries (text_tower.py), once per model and machine, in a thread
    once no index or tag job runs (timings taken beside a job would be wrong, and the job slower): searches are
    answered meanwhile, by the setting chosen for images. (Not at a lower priority: the runtime's threads it
    makes would keep it for every later query.)"""
    if not getattr(model, "needs_text_tuning", False):
        return

    def tune() -> None:
        while jobs.unfinished():
            time.sleep(IDLE_POLL_S)
        try:
            choice = model.tune_text()
        except Exception:  # noqa: BLE001 - queries go on with the setting they have
            logging.getLogger("uvicorn.error").exception("imgsearch: measuring the text tower failed")
            return
        logging.getLogger("uvicorn.error").info("imgsearch: %s", choice.describe() if choice else "")

    threading.Thread(target=tune, name="imgsearch-text-tower", daemon=True).start()


def _say_what_runs(model: Embedder) -> None:
    """One line in the server's log: what runs the model, and what auto measured to choose it."""
    choice = getattr(model, "precision_choice", None)
    text = getattr(model, "text_choice", None)
    logging.getLogger("uvicorn.error").info(
        "imgsearch: %s runs images as %s %s%s; texts as %s",
        model.name,
        model.backend,
        model.precision,
        f" ({choice.describe()})" if choice else "",
        text.describe()
        if text
        else f"{getattr(model, 'text_backend', model.backend)} "
        f"{getattr(model, 'text_precision', model.precision)}"
        + (
            " until the text tower is measured, in the background" if getattr(model, "needs_text_tuning", False) else ""
        ),
    )
