"""The Milvus gateway: one collection of image vectors with their file metadata.

Every other part of imgsearch reaches Milvus through ``MilvusStore``: it maps Milvus failures to errors of its
own (unreachable, collection gone), records which model and weights made the collection, and bumps the
generation token after each write. Embedded data directories are shared between processes by ``lite``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from pymilvus import MilvusClient, MilvusException

from imgsearch.errors import (
    CollectionNotFoundError,
    StoreUnavailableError,
)
from imgsearch.settings import Settings
from imgsearch.store.catalogue import Catalogue
from imgsearch.store.collection import Rows
from imgsearch.store.generation import GenerationToken
from imgsearch.store.lite import resolve_uri

log = logging.getLogger(__name__)

# pymilvus logs every failed RPC with a traceback; this gateway turns failures into errors of its own.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)


T = TypeVar("T")


class MilvusStore(Catalogue, Rows):
    """One image collection. Thread-safe; create once per process and share."""

    def __init__(
        self,
        milvus_uri: str,
        collection: str,
        token: str = "",
        index_type: str = "HNSW",
        generation_name: str | None = None,
    ):
        self.milvus_uri = milvus_uri
        self.collection = collection
        self.index_type = index_type
        self._token = token
        # None on a Milvus server. A store pinned to the collection behind a name shares that name's token.
        self.generation_token = GenerationToken.of(milvus_uri, generation_name or collection)
        self._client_lock = threading.Lock()
        self._client = self._connect()
        self._loaded = False
        self._partial_updates: bool | None = None  # whether this Milvus takes upserts of some fields; None: not tried
        self._text_match: str | None = None  # "bm25" or "like" (TEXT_MATCH_PROPERTY); None: not read yet

    @classmethod
    def from_settings(cls, settings: Settings) -> MilvusStore:
        return cls(settings.milvus_uri, settings.collection, settings.milvus_token, settings.index_type)

    def pinned(self, physical: str, own_token: bool = False) -> MilvusStore:
        """A store on collection ``physical`` itself, not on whatever the configured name points to later: what
        the API searches, so that a query embedded by one model never meets another model's collection while
        ``imgsearch migrate`` moves the name. Its writes bump the name's generation token, or with ``own_token``
        one of its own (a collection being built, which nobody reads yet)."""
        return MilvusStore(
            self.milvus_uri,
            physical,
            self._token,
            self.index_type,
            generation_name=None if own_token else self.collection,
        )

    @property
    def is_embedded(self) -> bool:
        return self.milvus_uri.endswith(".db")

    def _connect(self) -> MilvusClient:
        uri = resolve_uri(self.milvus_uri)
        try:
            client = MilvusClient(uri=uri, token=self._token, timeout=30)
            if client.has_collection(self.collection):
                client.load_collection(self.collection)  # a new connection may find it released
            return client
        except MilvusException as exc:
            raise StoreUnavailableError(f"cannot connect to Milvus at {self.milvus_uri}: {exc.message}") from exc

    def _call(self, operation: Callable[[MilvusClient], T]) -> T:
        """Run ``operation``; on an embedded store whose serving process went away, reconnect once.

        Milvus's own errors leave as domain errors a caller can act on: StoreUnavailableError when it cannot
        be reached, CollectionNotFoundError when the collection was dropped under us.
        """
        client = self._client
        try:
            try:
                return operation(client)
            except MilvusException as exc:
                if _is_not_loaded(exc):  # a restarted server comes back with its collections released
                    log.warning("collection %s was released (%s); loading it again", self.collection, exc.message)
                    client.load_collection(self.collection)
                    return operation(client)
                if not (self.is_embedded and _is_connection_error(exc)):
                    raise
                log.warning("lost the Milvus Lite server (%s); reconnecting", exc.message)
                with self._client_lock:
                    if self._client is client:
                        self._client = self._connect()
                    client = self._client
                return operation(client)
        except MilvusException as exc:
            raise self._domain_error(exc) from exc

    def _domain_error(self, exc: MilvusException) -> Exception:
        if _is_connection_error(exc):
            return StoreUnavailableError(f"Milvus at {self.milvus_uri} cannot be reached: {exc.message}")
        if "collection not found" in str(exc.message).lower() or "can't find collection" in str(exc.message).lower():
            return CollectionNotFoundError(self.collection)
        return exc

    def close(self) -> None:
        self._client.close()

    # Collection lifecycle

    # The name users configure is an alias of a collection named after its schema version (images -> images_v2),
    # so that an upgrade can build the next version beside it and switch the alias when the copy is complete.

    # Label sets (imgsearch/labels.py), one property each, so that the API and later indexing runs know them

    # Models: ``imgsearch migrate`` builds a collection for another model beside the one the name points to,
    # named after the schema version and the model (images_v4_3f2a9c1e), and then moves the name.

    # Writes

    # Change tracking for readers that cache (embedded mode only)

    # Reads


def _is_not_loaded(exc: MilvusException) -> bool:
    text = str(exc.message).lower()
    return "released" in text or "not loaded" in text


def _is_connection_error(exc: MilvusException) -> bool:
    text = f"{exc.code} {exc.message}".lower()
    return any(marker in text for marker in ("unavailable", "connect", "deadline", "closed", "socket"))
