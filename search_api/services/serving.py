"""What answers requests: one collection, the model that made it, and the services over the two. When
``imgsearch migrate`` (or ``--rollback``) moves the configured name to another collection, the ``Switcher``
prepares that collection's model and services beside the ones serving, then swaps them in whole.

Every request takes the services current when it starts and finishes with them, so a query is always embedded
by the model of the collection it searches, and nothing fails while the switch happens: the old collection is
still there (a migration keeps it for a rollback), and the old services are closed only after a grace period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imgsearch.model.embedder import Embedder
from imgsearch.model.loading import load_embedder
from imgsearch.search.batching import TextBatcher
from imgsearch.search.service import SearchService
from imgsearch.search_api.services.files import ServedFiles
from imgsearch.search_api.services.tags import TagCounter
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.store.catalogue import NOT_IMGSEARCH
from imgsearch.store.vector_copy import VectorCopy

log = logging.getLogger(__name__)


@dataclass
class Serving:
    collection: str  # the collection's own name (images_v4_3f2a9c1e), not the name users configure
    encoder: Embedder
    store: MilvusStore  # pinned to ``collection``
    vector_copy: VectorCopy | None
    batcher: TextBatcher
    search_service: SearchService
    files: ServedFiles
    tag_counter: TagCounter

    def close(self) -> None:
        self.batcher.close()
        if self.vector_copy is not None:
            self.vector_copy.stop()
        self.store.close()


def collection_model(settings: Settings, names: MilvusStore) -> str:
    """The model to load for the configured name: the one recorded with its collection (after a migration,
    the new one, whatever IMGSEARCH_MODEL still says), else IMGSEARCH_MODEL for a collection still to make."""
    if not names.exists():
        return settings.model
    recorded = names.model_info()[0]
    if recorded == NOT_IMGSEARCH:
        return settings.model  # ensure_collection says what is wrong with it
    if recorded != settings.model:
        log.warning(
            "collection %s is embedded by %s: serving that model (IMGSEARCH_MODEL is %s)",
            settings.collection,
            recorded,
            settings.model,
        )
    return recorded


def open_serving(settings: Settings, names: MilvusStore, collection: str, encoder: Embedder) -> Serving:
    """The services for ``collection`` (one of ``names``' collections), made by ``encoder``. Blocking."""
    store = names.pinned(collection)
    store.search_consistency = "Session"  # no time tick's wait per search (imgsearch/store/collection.py)
    try:
        store.check_model(encoder.name, encoder.dim, encoder.fingerprint)
        warm_up(encoder)
    except BaseException:
        store.close()
        raise
    vector_copy = None
    if settings.vector_cache == "on" or (settings.vector_cache == "auto" and store.is_embedded):
        vector_copy = VectorCopy(store, encoder.dim)
        vector_copy.start()
    batcher = TextBatcher(encoder)
    searched = vector_copy or store
    return Serving(
        collection,
        encoder,
        store,
        vector_copy,
        batcher,
        SearchService(encoder, searched, batcher),
        ServedFiles(store, settings.allowed_roots, settings.max_file_bytes),
        TagCounter(searched),
    )


def warm_up(encoder: Embedder) -> None:
    from PIL import Image

    encoder.embed_images([Image.new("RGB", (encoder.image_size, encoder.image_size))])
    encoder.embed_texts(["warm up"])


@dataclass
class Switcher:
    """Watches where the configured name points; when it moves, serves the collection it points to now."""

    settings: Settings
    names: MilvusStore
    current: Serving
    install: Callable[[Serving], None]
    poll_s: float = 1.0
    retry_s: float = 60.0  # after a collection's model failed to load
    grace_s: float = 60.0  # requests that started on the old services finish on them
    state: str = "serving"  # or "switching to ...", or why the last switch failed
    _failed: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _retired: list[threading.Timer] = field(default_factory=list)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="collection-switcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for timer in self._retired:
            if timer.is_alive():
                timer.cancel()
                timer.function()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                target = self.names.target()
            except Exception as exc:  # Milvus away for a moment: keep serving, look again
                log.debug("cannot read where %s points: %s", self.names.collection, exc)
                continue
            if target is None or target == self.current.collection or self._failed.get(target, 0) > time.monotonic():
                continue
            self.switch_to(target)

    def switch_to(self, target: str) -> None:
        self.state = f"switching to {target}"
        try:
            probe = self.names.pinned(target)
            try:
                model = probe.model_info()[0]
            finally:
                probe.close()
            encoder = self.current.encoder
            if model != encoder.name:
                log.warning("%s now points to %s, embedded by %s: loading it", self.names.collection, target, model)
                encoder = load_embedder(self.settings.model_copy(update={"model": model}))
            new = open_serving(self.settings, self.names, target, encoder)
        except Exception as exc:
            self._failed[target] = time.monotonic() + self.retry_s
            self.state = f"still serving {self.current.collection}: cannot serve {target}: {exc}"
            log.error("%s", self.state)
            return
        old, self.current = self.current, new
        self.install(new)
        self.state = "serving"
        log.warning("now serving %s (%s)", target, new.encoder.name)
        timer = threading.Timer(self.grace_s, old.close)
        timer.daemon = True
        timer.start()
        self._retired = [t for t in self._retired if t.is_alive()] + [timer]
