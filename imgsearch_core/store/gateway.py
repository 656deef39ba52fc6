"""The Milvus gateway: one collection of image vectors with their file metadata.

Every other part of imgsearch reaches Milvus through ``MilvusStore``: it maps Milvus failures to errors of its
own (unreachable, collection gone), records which model and weights made the collection, and bumps the
generation token after each write. Embedded data directories are shared between processes by ``lite``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pymilvus import MilvusClient, MilvusException

from imgsearch_core.errors import (
    CollectionNotFoundError,
    ModelMismatchError,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreUnavailableError,
    WeightsMismatchError,
)
from imgsearch_core.relevance import family_cutoff
from imgsearch_core.searchable_text import compose, name_words, with_tags, word_tokens
from imgsearch_core.store.fields import METADATA_FIELDS, SCHEMA_VERSION, TEXT_SPARSE, add_columns
from imgsearch_core.store.filters import ImageFilter, quote
from imgsearch_core.store.generation import GenerationToken
from imgsearch_core.store.lite import resolve_uri

log = logging.getLogger(__name__)

# pymilvus logs every failed RPC with a traceback; this gateway turns failures into errors of its own.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)

VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROOTS_PROPERTY = "imgsearch.roots"  # JSON list of the real paths of every indexed root
_FINGERPRINT_PROPERTY = "imgsearch.fingerprint"  # JSON: what the model makes of fixed probes (see imgsearch_core/encoder.py)
UPGRADE_PROPERTY = "imgsearch.upgrade"  # "copying" while an upgrade fills a collection, then "complete"
_CREATED_PROPERTY = "imgsearch.created"  # a random token per creation: tells a re-created collection apart
TEXT_MATCH_PROPERTY = "imgsearch.text_match"  # "bm25", or "like" on a Milvus without BM25 (before 2.5)
CUTOFF_PROPERTY = "imgsearch.cutoff"  # JSON: the auto cutoff's parameters for the collection's model family
NOT_IMGSEARCH = "(not an imgsearch collection)"  # the model of a collection that records none
LABEL_SET_PROPERTY = "imgsearch.labelset."  # + a set's name: the set, encoded by imgsearch_core/labels.py; "" once removed

_INDEX_PARAMS = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "DISKANN": {},
    "FLAT": {},
    "AUTOINDEX": {},
}

_MAX_PAGE = 16384  # the most rows Milvus returns per query
_GET_BATCH = 2000  # rows with vectors got by id per request

T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    row: dict[str, Any]
    vector: np.ndarray | None = None  # with_vectors only


class MilvusStore:
    """One image collection. Thread-safe; create once per process and share."""

    def __init__(self, milvus_uri: str, collection: str, token: str = "", index_type: str = "HNSW",
                 generation_name: str | None = None):
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
    def from_settings(cls, settings) -> MilvusStore:
        return cls(settings.milvus_uri, settings.collection, settings.milvus_token, settings.index_type)

    def pinned(self, physical: str, own_token: bool = False) -> MilvusStore:
        """A store on collection ``physical`` itself, not on whatever the configured name points to later: what
        the API searches, so that a query embedded by one model never meets another model's collection while
        ``imgsearch migrate`` moves the name. Its writes bump the name's generation token, or with ``own_token``
        one of its own (a collection being built, which nobody reads yet)."""
        return MilvusStore(self.milvus_uri, physical, self._token, self.index_type,
                           generation_name=None if own_token else self.collection)

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

    def exists(self) -> bool:
        return self._call(lambda c: c.has_collection(self.collection))

    def ensure_collection(self, model: str, dim: int, fingerprint: Sequence[float] | None = None,
                          record_fingerprint: bool = False) -> None:
        """Create the collection for ``model``, or check that an existing one was made by it (and, given a
        fingerprint, by the same weights). ``record_fingerprint``: a writer (the indexer) records its
        fingerprint on a collection made before fingerprints were kept; readers never do."""
        if self.exists() or self.finish_interrupted_switch():
            self.check_model(model, dim, fingerprint, record_fingerprint)
            return
        identity = {"imgsearch.model": model, "imgsearch.dim": str(dim)}
        if fingerprint is not None:
            identity[_FINGERPRINT_PROPERTY] = json.dumps([round(float(v), 5) for v in fingerprint])
        identity[CUTOFF_PROPERTY] = family_cutoff(model).to_json()
        physical = self.physical_name(SCHEMA_VERSION)
        self.create_physical(physical, dim, identity)
        self._call(lambda c: c.create_alias(physical, self.collection))

    # The name users configure is an alias of a collection named after its schema version (images -> images_v2),
    # so that an upgrade can build the next version beside it and switch the alias when the copy is complete.

    def physical_name(self, version: int) -> str:
        return f"{self.collection}_v{version}"

    def create_physical(self, physical: str, dim: int, properties: dict[str, str]) -> None:
        """Create collection ``physical`` with the current schema, its index, and ``properties``, and load it."""
        # The lines marked "server only" are what Milvus Lite ignores and only a server honours (index build
        # parameters, the description, loading); the server-path tests check them, `make mutants` does not.
        properties = {**properties, "imgsearch.schema": str(SCHEMA_VERSION), _CREATED_PROPERTY: uuid.uuid4().hex}
        model = properties.get("imgsearch.model", "")  # pragma: no mutate (server only: the description)
        for bm25 in (True, False):
            # Milvus before 2.5 has no BM25 function (nor analyzers): there, words are matched with LIKE.
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)  # pragma: no mutate (defaults)
            add_columns(schema, dim, bm25=bm25)
            index_params = MilvusClient.prepare_index_params()
            index_params.add_index(
                "vector", index_type=self.index_type, metric_type="COSINE", params=_INDEX_PARAMS[self.index_type]  # pragma: no mutate (server only)
            )
            if bm25:
                index_params.add_index(TEXT_SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            try:
                self._call(lambda c, schema=schema, bm25=bm25: c.create_collection(
                    physical, schema=schema, properties={**properties, TEXT_MATCH_PROPERTY: "bm25" if bm25 else "like"},
                    description=f"imgsearch images embedded by {model}", consistency_level="Strong",  # pragma: no mutate (server only)
                ))
                # sync=False: pymilvus would otherwise poll the index state with a fixed half-second sleep, and
                # an index on an empty collection is built by the time load_collection runs.
                self._call(lambda c, index_params=index_params: c.create_index(physical, index_params, sync=False))  # pragma: no mutate (speed only)
                break
            except MilvusException as exc:
                if not bm25:
                    raise
                log.warning("this Milvus has no BM25 full-text search (%s); names are matched with LIKE", exc.message)
                if self._call(lambda c: c.has_collection(physical)):
                    self._call(lambda c: c.drop_collection(physical))
        self._call(lambda c: c.load_collection(physical))  # pragma: no mutate (server only: Lite loads on its own)

    def target(self) -> str | None:
        """The collection the configured name points to (itself, for a collection made before aliases)."""
        if not self.exists():
            return None
        return self._call(lambda c: c.describe_collection(self.collection))["collection_name"]

    def schema_version(self) -> int:
        """The schema version the collection was written with (1 for collections made before versions were read)."""
        try:
            return int(self._properties().get("imgsearch.schema", "1"))
        except ValueError:
            return 1

    def check_schema(self) -> None:
        """Raise SchemaOutdatedError (run `imgsearch upgrade`) or SchemaTooNewError unless the collection has the
        schema this code reads and writes."""
        version = self.schema_version()
        if version < SCHEMA_VERSION:
            raise SchemaOutdatedError(self.collection, version, SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(self.collection, version, SCHEMA_VERSION)

    def upgrade_complete(self, physical: str) -> bool:
        """Whether ``physical`` is an upgrade's copy that was filled to the end."""
        if not self._call(lambda c: c.has_collection(physical)):
            return False
        return self._properties(physical).get(UPGRADE_PROPERTY) == "complete"

    def finish_interrupted_switch(self) -> bool:
        """An upgrade that dropped the old collection but died before naming the new one: name it now."""
        physical = self.physical_name(SCHEMA_VERSION)
        if not self.upgrade_complete(physical):
            return False
        self._call(lambda c: c.create_alias(physical, self.collection))
        self._wrote()
        log.warning("finished the upgrade of collection %s that was interrupted at its very end", self.collection)
        return True

    def indexed_roots(self) -> list[str]:
        """The folders (and single files) ever indexed into this collection: the API serves files only below them."""
        if not self.exists():
            return []
        try:
            roots = json.loads(self._properties().get(_ROOTS_PROPERTY, "[]"))
        except ValueError:
            return []
        return [root for root in roots if isinstance(root, str)]

    def add_roots(self, roots: Sequence[str]) -> None:
        """Record ``roots`` as indexed. Read-modify-write, checked afterwards: two indexers adding at once both land."""
        for _attempt in range(5):
            known = self.indexed_roots()
            missing = [root for root in roots if root not in known]
            if not missing:
                return
            self.set_properties(self.collection, {_ROOTS_PROPERTY: json.dumps(sorted(set(known) | set(missing)))})
        log.warning("could not record indexed roots %s after 5 attempts", roots)

    def model_info(self) -> tuple[str, int]:
        """The (model, dim) the collection was made with."""
        if not self.exists():
            raise CollectionNotFoundError(self.collection)
        info = self._call(lambda c: c.describe_collection(self.collection))
        vector = next((f for f in info["fields"] if f["name"] == "vector"), None)
        dim = int(vector["params"]["dim"]) if vector else 0
        model = (info.get("properties") or {}).get("imgsearch.model")
        return (model or NOT_IMGSEARCH), dim

    def _properties(self, collection: str | None = None) -> dict[str, str]:
        return self._call(lambda c: c.describe_collection(collection or self.collection)).get("properties") or {}

    def creation_token(self) -> str:
        """Changes when the collection is dropped and made again; raises CollectionNotFoundError if it is gone."""
        if not self.exists():
            raise CollectionNotFoundError(self.collection)
        return self._properties().get(_CREATED_PROPERTY, "")

    def check_model(self, model: str, dim: int | None = None, fingerprint: Sequence[float] | None = None,
                    record_missing: bool = False) -> None:
        """Raise ModelMismatchError unless the collection was made by ``model`` (and ``dim``, if given), and
        WeightsMismatchError if a ``fingerprint`` is given and differs from the recorded one. A collection made
        before fingerprints were recorded gets this one if ``record_missing``."""
        indexed_model, indexed_dim = self.model_info()
        if indexed_model != NOT_IMGSEARCH:
            self.check_schema()
        if indexed_model != model or (dim is not None and indexed_dim != dim):
            raise ModelMismatchError(self.collection, indexed_model, indexed_dim, model, dim)
        if fingerprint is None:
            return
        recorded = self._properties().get(_FINGERPRINT_PROPERTY)
        if recorded is None:
            if not record_missing:
                return
            self.set_properties(self.collection, {_FINGERPRINT_PROPERTY: json.dumps([round(float(v), 5) for v in fingerprint])})
            return
        if not fingerprints_match(json.loads(recorded), fingerprint):
            raise WeightsMismatchError(self.collection, model)

    # Label sets (imgsearch_core/labels.py), one property each, so that the API and later indexing runs know them

    def label_sets(self) -> dict[str, str]:
        """The stored label sets by name, each as ``labels.encode`` wrote it."""
        if not self.exists():
            return {}
        return {key[len(LABEL_SET_PROPERTY):]: value for key, value in sorted(self._properties().items())
                if key.startswith(LABEL_SET_PROPERTY) and value}

    def put_label_set(self, name: str, encoded: str) -> None:
        """Store (or, with ``encoded`` = "", remove) the label set ``name``."""
        self.set_properties(self.collection, {LABEL_SET_PROPERTY + name: encoded})
        self._wrote()

    def drop(self) -> None:
        """Drop the collection the configured name points to, the name, and the name's other collections (an
        earlier model's, kept by ``imgsearch migrate`` for a rollback)."""
        target = self.target()
        if target is not None and target != self.collection:
            self._call(lambda c: c.drop_alias(self.collection))
        for physical in ([target] if target is not None else []) + self.others():
            self._call(lambda c, physical=physical: c.drop_collection(physical))
        self._wrote()

    # Models: ``imgsearch migrate`` builds a collection for another model beside the one the name points to,
    # named after the schema version and the model (images_v4_3f2a9c1e), and then moves the name.

    def others(self) -> list[str]:
        """This name's collections that it does not point to: an earlier model's, an unfinished migration's, an
        upgrade's copy."""
        own = re.compile(rf"{re.escape(self.collection)}_v\d+(_[0-9a-f]{{8}})?")
        target = self.target()
        return sorted(name for name in self._call(lambda c: c.list_collections())
                      if own.fullmatch(name) and name != target)

    def drop_other(self, physical: str) -> None:
        """Drop one of ``others()``; never the collection the name points to."""
        if physical == self.target() or physical not in self.others():
            raise ValueError(f"{physical} is not one of the collections {self.collection} no longer points to")
        self._call(lambda c: c.drop_collection(physical))

    def properties_of(self, physical: str) -> dict[str, str]:
        return self._properties(physical)

    def set_properties(self, physical: str, properties: dict[str, str], attempts: int = 5) -> None:
        """Set properties of the collection ``physical`` (or of the one a name points to).

        Tried again when the Milvus Lite server fails the write: it writes a collection's schema.json through one
        fixed temporary file without a lock, so two processes setting properties at once (two indexers recording
        their roots) can fail one of them with "No such file or directory: .../schema.json.tmp" (milvus-lite
        3.2.2). The server has the new properties in memory by then; writing them again persists them."""
        for attempt in range(1, attempts + 1):
            try:
                return self._call(lambda c: c.alter_collection_properties(physical, properties=properties))
            except MilvusException as exc:
                if attempt == attempts or not _is_lite_schema_race(exc):
                    raise
                log.warning("Milvus Lite failed to save collection %s's properties (%s); trying again", physical,
                            exc.message)
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # apart from the other writer

    def point_to(self, physical: str) -> None:
        """Move the configured name to collection ``physical`` in one step: every later call through the name,
        by any process, reaches ``physical``."""
        self._call(lambda c: c.alter_alias(physical, self.collection))
        self._wrote()

    # Writes

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write whole rows. A row without ``text`` gets its file and folder names as its searchable text."""
        if rows:
            payload = [{"text": compose(name_words(row["path"])) if "text" not in row else row["text"], **row,
                        "vector": np.asarray(row["vector"], dtype=np.float32).tolist()} for row in rows]
            self._call(lambda c: c.upsert(self.collection, payload))
            self._wrote()

    def set_tags(self, tags: dict[str, tuple[list[str], list[float], str]]) -> int:
        """Write only the ``tags``, ``tag_scores`` and searchable ``text`` (given as it was read, before the new
        tags) of rows by id: a partial update, so a vector or path that an indexer wrote meanwhile stays. Rows
        deleted meanwhile are skipped. Returns the rows written.

        A server without partial updates (before Milvus 2.6) gets whole rows, read again just before."""
        if not tags:
            return 0
        payload = [{"id": i, "tags": names, "tag_scores": scores, "text": with_tags(text, names)}
                   for i, (names, scores, text) in tags.items()]
        if self._partial_updates is not False:
            try:
                return self._upsert_partial(payload)
            except MilvusException as exc:  # rows deleted meanwhile, or a server without partial updates
                log.info("tags: a batch was refused (%s); writing the rows that remain", exc.message)
            present = self.get(list(tags))
            try:
                return self._upsert_partial([row for row in payload if row["id"] in present]) if present else 0
            except MilvusException:
                if self._partial_updates:  # they work here: never fall back to whole rows and their race
                    raise
                log.info("this Milvus has no partial updates: tags are written with whole rows")
                self._partial_updates = False
        whole = [{**row, "tags": tags[i][0], "tag_scores": tags[i][1], "text": with_tags(row["text"], tags[i][0])}
                 for i, row in self.get(list(tags), with_vectors=True).items()]
        self.upsert(whole)
        return len(whole)

    def _upsert_partial(self, rows: list[dict[str, Any]]) -> int:
        self._call(lambda c: c.upsert(self.collection, rows, partial_update=True))
        self._partial_updates = True
        self._wrote()
        return len(rows)

    def delete(self, ids: Sequence[str], batch: int = 1000) -> None:
        for start in range(0, len(ids), batch):
            chunk = list(ids[start:start + batch])
            self._call(lambda c, chunk=chunk: c.delete(self.collection, ids=chunk))
            self._wrote()

    # Change tracking for readers that cache (embedded mode only)

    def generation(self) -> str:
        """Changes after every write by any imgsearch process to this embedded collection; '' on a server."""
        return self.generation_token.read() if self.generation_token else ""

    def _wrote(self) -> None:
        if self.generation_token:
            self.generation_token.bump()

    def flush(self) -> None:
        self._call(lambda c: c.flush(self.collection))

    # Reads

    def count(self) -> int:
        if not self.exists():
            return 0
        result = self._call(lambda c: c.query(self.collection, filter="", output_fields=["count(*)"]))
        return int(result[0]["count(*)"])

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> dict[str, dict[str, Any]]:
        """Rows by id; ids that are missing (or could never be ours) are absent from the result."""
        ids = [i for i in ids if VALID_ID.fullmatch(i)]  # pymilvus puts ids into a filter expression
        if not ids:
            return {}
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        rows = self._call(lambda c: c.get(self.collection, ids=list(ids), output_fields=fields))
        return {row["id"]: row for row in rows}

    def iter_metadata(self) -> Iterator[dict[str, Any]]:
        """Every row's metadata (no vectors)."""
        return self.iter_rows()

    def iter_rows(self, fields: list[str] | None = None, with_vectors: bool = False, filter_expr: str = "",
                  batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Rows matching ``filter_expr`` (all by default), with ``fields`` (all metadata by default).

        With vectors, the ids are listed first and the rows then got by id: Milvus Lite's query iterator sorts
        every row by id for each page, and pages with vectors are small, so at 100,000 rows it took 99 s where
        listing and getting took 21 s (2 cores). A row deleted in between is skipped; one added is not seen."""
        output_fields = list(fields or METADATA_FIELDS)
        if not with_vectors:
            yield from self._iterate(output_fields, filter_expr, batch_size)
            return
        ids = [row["id"] for row in self._iterate(["id"], filter_expr, _MAX_PAGE)]
        for start in range(0, len(ids), _GET_BATCH):
            chunk = ids[start:start + _GET_BATCH]
            yield from self._call(lambda c, chunk=chunk: c.get(self.collection, ids=chunk,
                                                               output_fields=output_fields + ["vector"]))

    def _iterate(self, output_fields: list[str], filter_expr: str, batch_size: int) -> Iterator[dict[str, Any]]:
        iterator = self._call(lambda c: c.query_iterator(
            self.collection, batch_size=batch_size, filter=filter_expr, output_fields=output_fields
        ))
        try:
            while True:
                try:
                    batch = iterator.next()
                except MilvusException as exc:
                    raise self._domain_error(exc) from exc
                if not batch:
                    break
                yield from batch
        finally:
            iterator.close()

    def search(
        self, vectors: np.ndarray, limit: int, offset: int = 0, image_filter: ImageFilter = ImageFilter(),
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Nearest rows by cosine similarity, best first, one list per query vector."""
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        results = self._call(lambda c: c.search(
            self.collection, data=np.asarray(vectors).tolist(), anns_field="vector", limit=limit, offset=offset,
            filter=image_filter.expr(), output_fields=fields,
            search_params={"metric_type": "COSINE", "params": search_params(self.index_type, limit + offset)},
        ))
        return [[_hit(hit["id"], float(hit["distance"]), dict(hit["entity"])) for hit in hits] for hits in results]

    def search_text(self, text: str, limit: int, image_filter: ImageFilter = ImageFilter(),
                    with_vectors: bool = False) -> list[Hit]:
        """Rows whose searchable text (names, descriptions, tags) matches the words of ``text``, best BM25
        match first; ``Hit.score`` is the BM25 score (larger is better)."""
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        if self._text_match is None:  # a property of the server the collection was made on: read once
            self._text_match = self._properties().get(TEXT_MATCH_PROPERTY, "bm25")
        if self._text_match == "like":
            return self._search_text_like(text, limit, image_filter, fields)
        results = self._call(lambda c: c.search(
            self.collection, data=[text], anns_field=TEXT_SPARSE, limit=limit, filter=image_filter.expr(),
            output_fields=fields, search_params={"metric_type": "BM25"},
        ))
        # Milvus Lite reports BM25 scores negated (best most negative); a server reports them positive.
        return [_hit(hit["id"], abs(float(hit["distance"])), dict(hit["entity"])) for hit in results[0]]

    def _search_text_like(self, text: str, limit: int, image_filter: ImageFilter, fields: list[str]) -> list[Hit]:
        """Without BM25 (Milvus before 2.5): rows holding any of the words, most words first, scored by the
        share of words they hold. Slower and cruder, but names are still found."""
        words = list(dict.fromkeys(word_tokens(text)))[:16]
        if not words:
            return []
        like = " or ".join(f"text like {quote('%' + word + '%')}" for word in words)
        expr = f"({like})" + (f" and {image_filter.expr()}" if image_filter.clauses else "")
        rows = self._call(lambda c: c.query(self.collection, filter=expr, output_fields=fields, limit=_MAX_PAGE))
        scored = [(sum(word in row["text"] for word in words) / len(words), row) for row in rows]
        scored.sort(key=lambda pair: (-pair[0], pair[1]["id"]))
        return [_hit(row["id"], score, dict(row)) for score, row in scored[:limit]]

    def sample_vectors(self, size: int = 2000) -> np.ndarray:
        """The vectors of a fixed random sample of about ``size`` rows: those whose id (a hash, so uniformly
        spread) falls below a bound. The same rows every time, until rows come or go."""
        total = self.count()
        if total == 0:
            return np.zeros((0, 0), dtype=np.float32)
        bound = id_sample_bound(size, total)
        expr = f'id < "{bound}"' if bound else ""
        rows = list(self.iter_rows(fields=["id"], with_vectors=True, filter_expr=expr))
        return np.asarray([row["vector"] for row in rows[:2 * size]], dtype=np.float32)

    def cutoff_params(self) -> str | None:
        """The auto cutoff's parameters recorded with the collection (JSON), if any."""
        return self._properties().get(CUTOFF_PROPERTY) if self.exists() else None


def id_sample_bound(size: int, total: int) -> str:
    """An id bound that about ``size`` of ``total`` rows lie below ('' when all should be taken)."""
    if total <= size:
        return ""
    return format(max(1, int(size / total * 16**6)), "06x")


def _hit(row_id: str, score: float, entity: dict[str, Any]) -> Hit:
    vector = entity.pop("vector", None)
    return Hit(id=row_id, score=score, row=entity,
               vector=None if vector is None else np.asarray(vector, dtype=np.float32))


def search_params(index_type: str, depth: int) -> dict[str, int]:
    """The search breadth for ``index_type`` that reaches ``depth`` (limit + offset) results: a server refuses an
    HNSW ``ef`` or a DiskANN ``search_list`` below it. The floor of 64 and IVF's nprobe trade speed for recall
    on a server's index; Milvus Lite searches exactly whatever they are."""
    if index_type == "HNSW":
        return {"ef": max(64, depth)}
    if index_type == "DISKANN":
        return {"search_list": max(64, depth)}
    if index_type == "IVF_FLAT":
        return {"nprobe": 32}
    return {}


def fingerprints_match(a: Sequence[float], b: Sequence[float]) -> bool:
    """Same weights give nearly the same probe embeddings on any device or precision; other weights do not."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not a.size:
        return False
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)) >= 0.98


def _is_not_loaded(exc: MilvusException) -> bool:
    text = str(exc.message).lower()
    return "released" in text or "not loaded" in text


def _is_lite_schema_race(exc: MilvusException) -> bool:
    """Milvus Lite's server lost a race between two writers of a collection's schema.json (set_properties)."""
    return "schema.json" in str(exc.message) and "No such file or directory" in str(exc.message)


def _is_connection_error(exc: MilvusException) -> bool:
    text = f"{exc.code} {exc.message}".lower()
    return any(marker in text for marker in ("unavailable", "connect", "deadline", "closed", "socket"))
