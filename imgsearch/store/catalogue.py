"""The catalogue: which physical collection a name points to (an alias), and what each one records in its properties
(model, fingerprint, roots, schema version, label sets, cutoff parameters). A mixin of ``MilvusStore``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Sequence

from pymilvus import MilvusClient, MilvusException

from imgsearch.errors import (
    CollectionNotFoundError,
    ModelMismatchError,
    SchemaOutdatedError,
    SchemaTooNewError,
    WeightsMismatchError,
)
from imgsearch.model.embedder import fingerprints_match
from imgsearch.search.relevance import family_cutoff
from imgsearch.store.fields import SCHEMA_VERSION, TEXT_SPARSE, add_columns

log = logging.getLogger(__name__)

VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_ROOTS_PROPERTY = "imgsearch.roots"  # JSON list of the real paths of every indexed root

_FINGERPRINT_PROPERTY = "imgsearch.fingerprint"  # JSON: what the model makes of fixed probes (see imgsearch/encoder.py)

UPGRADE_PROPERTY = "imgsearch.upgrade"  # "copying" while an upgrade fills a collection, then "complete"

_CREATED_PROPERTY = "imgsearch.created"  # a random token per creation: tells a re-created collection apart

TEXT_MATCH_PROPERTY = "imgsearch.text_match"  # "bm25", or "like" on a Milvus without BM25 (before 2.5)

CUTOFF_PROPERTY = "imgsearch.cutoff"  # JSON: the auto cutoff's parameters for the collection's model family

NOT_IMGSEARCH = "(not an imgsearch collection)"  # the model of a collection that records none

LABEL_SET_PROPERTY = "imgsearch.labelset."  # + a set's name: the set, encoded by imgsearch/labels.py; "" once removed

_INDEX_PARAMS = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "DISKANN": {},
    "FLAT": {},
    "AUTOINDEX": {},
}


class Catalogue:
    """The names and properties of an image collection: what ``MilvusStore`` does before and around its rows."""

    def exists(self) -> bool:
        return self._call(lambda c: c.has_collection(self.collection))

    def ensure_collection(
        self, model: str, dim: int, fingerprint: Sequence[float] | None = None, record_fingerprint: bool = False
    ) -> None:
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
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False
            )  # pragma: no mutate (defaults)
            add_columns(schema, dim, bm25=bm25)
            index_params = MilvusClient.prepare_index_params()
            index_params.add_index(
                "vector",
                index_type=self.index_type,
                metric_type="COSINE",
                params=_INDEX_PARAMS[self.index_type],  # pragma: no mutate (server only)
            )
            if bm25:
                index_params.add_index(TEXT_SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            try:
                self._call(
                    lambda c, schema=schema, bm25=bm25: c.create_collection(
                        physical,
                        schema=schema,
                        properties={**properties, TEXT_MATCH_PROPERTY: "bm25" if bm25 else "like"},
                        description=f"imgsearch images embedded by {model}",
                        consistency_level="Strong",  # pragma: no mutate (server only)
                    )
                )
                # sync=False: pymilvus would otherwise poll the index state with a fixed half-second sleep, and
                # an index on an empty collection is built by the time load_collection runs.
                self._call(
                    lambda c, index_params=index_params: c.create_index(physical, index_params, sync=False)
                )  # pragma: no mutate (speed only)
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

    def recorded_fingerprint(self) -> list[float] | None:
        """The model fingerprint recorded with the collection (see ``check_model``), or None: none recorded, or not
        a list of numbers."""
        recorded = self._properties().get(_FINGERPRINT_PROPERTY) if self.exists() else None
        try:
            values = json.loads(recorded) if recorded else None
        except ValueError:
            return None
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            return None
        return [float(v) for v in values]

    def _properties(self, collection: str | None = None) -> dict[str, str]:
        return self._call(lambda c: c.describe_collection(collection or self.collection)).get("properties") or {}

    def creation_token(self) -> str:
        """Changes when the collection is dropped and made again; raises CollectionNotFoundError if it is gone."""
        if not self.exists():
            raise CollectionNotFoundError(self.collection)
        return self._properties().get(_CREATED_PROPERTY, "")

    def check_model(
        self,
        model: str,
        dim: int | None = None,
        fingerprint: Sequence[float] | None = None,
        record_missing: bool = False,
    ) -> None:
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
            self.set_properties(
                self.collection, {_FINGERPRINT_PROPERTY: json.dumps([round(float(v), 5) for v in fingerprint])}
            )
            return
        if not fingerprints_match(json.loads(recorded), fingerprint):
            raise WeightsMismatchError(self.collection, model)

    def label_sets(self) -> dict[str, str]:
        """The stored label sets by name, each as ``labels.encode`` wrote it."""
        if not self.exists():
            return {}
        return {
            key[len(LABEL_SET_PROPERTY) :]: value
            for key, value in sorted(self._properties().items())
            if key.startswith(LABEL_SET_PROPERTY) and value
        }

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

    def others(self) -> list[str]:
        """This name's collections that it does not point to: an earlier model's, an unfinished migration's, an
        upgrade's copy."""
        own = re.compile(rf"{re.escape(self.collection)}_v\d+(_[0-9a-f]{{8}})?")
        target = self.target()
        return sorted(
            name for name in self._call(lambda c: c.list_collections()) if own.fullmatch(name) and name != target
        )

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
                log.warning(
                    "Milvus Lite failed to save collection %s's properties (%s); trying again", physical, exc.message
                )
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # apart from the other writer

    def point_to(self, physical: str) -> None:
        """Move the configured name to collection ``physical`` in one step: every later call through the name,
        by any process, reaches ``physical``."""
        self._call(lambda c: c.alter_alias(physical, self.collection))
        self._wrote()

    def cutoff_params(self) -> str | None:
        """The auto cutoff's parameters recorded with the collection (JSON), if any."""
        return self._properties().get(CUTOFF_PROPERTY) if self.exists() else None


def _is_lite_schema_race(exc: MilvusException) -> bool:
    """Milvus Lite's server lost a race between two writers of a collection's schema.json (set_properties)."""
    return "schema.json" in str(exc.message) and "No such file or directory" in str(exc.message)
