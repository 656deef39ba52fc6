"""The Milvus gateway: one collection of image vectors with their file metadata.

With a Milvus Lite URI (a path ending in ``.db``) several processes share the
data directory: the first process that opens it serves it over gRPC on a Unix
socket (Milvus Lite allows one process per directory) and writes the socket's
path to ``<data dir>/imgsearch-endpoint.json``; later processes connect to it.
If the serving process exits, the next call of another process takes over.
The socket lies in the data directory (mode 0700) or, when that path is too
long for a socket, in a private runtime folder: only the owner can connect.
With a server URI (``http://host:19530``) every process simply connects.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pymilvus import MilvusClient, MilvusException

from imgsearch_core.errors import (
    CollectionNotFoundError,
    ModelMismatchError,
    StoreUnavailableError,
    WeightsMismatchError,
)
from imgsearch_core.safe_files import UnsafeFileError, private_dir
from imgsearch_core.store.fields import METADATA_FIELDS, add_columns

log = logging.getLogger(__name__)

# Milvus Lite lacks AllocTimestamp; pymilvus' query iterator falls back to a client timestamp, which is
# correct, but both sides log the miss on every call.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
# pymilvus logs every failed RPC with a traceback; this gateway turns failures into errors of its own.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)

ENDPOINT_FILE = "imgsearch-endpoint.json"
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMA_VERSION = 1
_ROOTS_PROPERTY = "imgsearch.roots"  # JSON list of the real paths of every indexed root
_FINGERPRINT_PROPERTY = "imgsearch.fingerprint"  # JSON: what the model makes of fixed probes (see Encoder)
_CREATED_PROPERTY = "imgsearch.created"  # a random token per creation: tells a re-created collection apart

_INDEX_PARAMS = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "DISKANN": {},
    "FLAT": {},
    "AUTOINDEX": {},
}

T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    row: dict[str, Any]


# ── Embedded (Milvus Lite) endpoint sharing ─────────────────────────────────

_hosted: dict[Path, tuple[Any, Any, int]] = {}
_hosted_lock = threading.Lock()


def resolve_uri(milvus_uri: str, wait_s: float = 30.0) -> str:
    """The gRPC address to connect to for ``milvus_uri``; hosts a Lite data directory if nobody does."""
    if not milvus_uri.endswith(".db"):
        return milvus_uri
    data_dir = Path(milvus_uri).expanduser().resolve()
    _private_dir(data_dir)
    deadline = time.monotonic() + wait_s
    while True:
        url = _live_endpoint(data_dir)
        if url:
            return url
        try:
            return _host(data_dir)
        except _DataDirLocked:
            # Another process holds the directory and is about to publish its socket (or is a
            # process that does not share it, such as a plain pymilvus script).
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"Milvus Lite data directory {data_dir} is locked by another process that does not "
                    f"serve it to others. Stop that process, or point IMGSEARCH_MILVUS_URI at a Milvus server."
                ) from None
            time.sleep(0.2)


class _DataDirLocked(Exception):
    pass


def _private_dir(path: Path) -> None:
    try:
        private_dir(path)
    except UnsafeFileError as exc:
        raise StoreUnavailableError(f"{path}: {exc.reason}; refusing to keep Milvus data in it") from None


_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def _socket_stem(data_dir: Path) -> Path:
    """The folder and name prefix of ``data_dir``'s sockets: inside it, or in a private runtime folder when
    that path would be too long for a socket (judged with the longest pid, so it never depends on the pid)."""
    if len(os.fsencode(data_dir / "imgsearch-4294967295.sock")) <= _MAX_SOCKET_PATH:
        return data_dir / "imgsearch"
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"imgsearch-{os.getuid()}"
    _private_dir(runtime)
    return runtime / hashlib.blake2b(os.fsencode(data_dir), digest_size=10).hexdigest()


def _socket_path(data_dir: Path, pid: int) -> Path:
    """Where process ``pid`` serves ``data_dir``. The pid is part of the name: a new host never reuses the
    address of a dead one, which pymilvus would still hold a broken channel to."""
    stem = _socket_stem(data_dir)
    return stem.with_name(f"{stem.name}-{pid}.sock")


def _remove_stale_sockets(data_dir: Path) -> None:
    """Sockets of hosts that died; called while holding the directory's lock, so none is in use."""
    stem = _socket_stem(data_dir)
    for stale in stem.parent.glob(f"{stem.name}-*.sock"):
        stale.unlink(missing_ok=True)


def _live_endpoint(data_dir: Path) -> str | None:
    with _hosted_lock:
        if data_dir in _hosted:
            return f"unix:{_hosted[data_dir][2]}"
    try:
        info = json.loads((data_dir / ENDPOINT_FILE).read_text())
        pid, path = int(info["pid"]), str(info["socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid) or path != str(_socket_path(data_dir, pid)):  # only a socket this folder would use
        return None
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
        return f"unix:{path}"
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host(data_dir: Path) -> str:
    from milvus_lite import DataDirLockedError, MilvusLite
    from milvus_lite.adapter.grpc.server import _build_server

    with _hosted_lock:
        if data_dir in _hosted:
            return f"unix:{_hosted[data_dir][2]}"
        try:
            db = MilvusLite(str(data_dir))
        except DataDirLockedError:
            raise _DataDirLocked() from None
        path = _socket_path(data_dir, os.getpid())
        try:
            _remove_stale_sockets(data_dir)
            server = _build_server(db, 8)
            server.add_insecure_port(f"unix:{path}")
            server.start()
            os.chmod(path, 0o600)
        except BaseException:
            db.close()
            raise
        _hosted[data_dir] = (server, db, str(path))
    endpoint = data_dir / ENDPOINT_FILE
    tmp = endpoint.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "socket": str(path)}))
    os.replace(tmp, endpoint)
    log.info("serving Milvus Lite data directory %s on %s", data_dir, path)
    return f"unix:{path}"


def release_hosted(milvus_uri: str | None = None) -> None:
    """Stop serving the Lite data directory of ``milvus_uri`` (all of them when None; called at exit)."""
    with _hosted_lock:
        wanted = None if milvus_uri is None else Path(milvus_uri).expanduser().resolve()
        entries = [(d, e) for d, e in _hosted.items() if wanted is None or d == wanted]
        for data_dir, _entry in entries:
            del _hosted[data_dir]
    for data_dir, (server, db, socket_path) in entries:
        try:
            info = json.loads((data_dir / ENDPOINT_FILE).read_text())
            if info.get("pid") == os.getpid():
                (data_dir / ENDPOINT_FILE).unlink()
        except (OSError, ValueError):
            pass
        try:
            server.stop(grace=2).wait(5)
            Path(socket_path).unlink(missing_ok=True)  # before the lock goes: the next host makes its own
        finally:
            db.close()


atexit.register(release_hosted)


# ── The collection gateway ──────────────────────────────────────────────────


class MilvusStore:
    """One image collection. Thread-safe; create once per process and share."""

    def __init__(self, milvus_uri: str, collection: str, token: str = "", index_type: str = "HNSW"):
        self.milvus_uri = milvus_uri
        self.collection = collection
        self.index_type = index_type
        self._token = token
        self._client_lock = threading.Lock()
        self._client = self._connect()
        self._loaded = False

    @classmethod
    def from_settings(cls, settings) -> MilvusStore:
        return cls(settings.milvus_uri, settings.collection, settings.milvus_token, settings.index_type)

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
        if self.exists():
            self.check_model(model, dim, fingerprint, record_fingerprint)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        add_columns(schema, dim)
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index(
            "vector", index_type=self.index_type, metric_type="COSINE", params=_INDEX_PARAMS[self.index_type]
        )
        identity = {"imgsearch.schema": str(_SCHEMA_VERSION), "imgsearch.model": model, "imgsearch.dim": str(dim),
                    _CREATED_PROPERTY: uuid.uuid4().hex}
        if fingerprint is not None:
            identity[_FINGERPRINT_PROPERTY] = json.dumps([round(float(v), 5) for v in fingerprint])
        self._call(lambda c: c.create_collection(
            self.collection, schema=schema, properties=identity,
            description=f"imgsearch images embedded by {model}", consistency_level="Strong",
        ))
        # sync=False: pymilvus would otherwise poll the index state with a fixed half-second sleep, and an
        # index on an empty collection is built by the time load_collection runs.
        self._call(lambda c: c.create_index(self.collection, index_params, sync=False))
        self._call(lambda c: c.load_collection(self.collection))

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
            value = json.dumps(sorted(set(known) | set(missing)))
            self._call(lambda c, value=value: c.alter_collection_properties(
                self.collection, properties={_ROOTS_PROPERTY: value}))
        log.warning("could not record indexed roots %s after 5 attempts", roots)

    def model_info(self) -> tuple[str, int]:
        """The (model, dim) the collection was made with."""
        if not self.exists():
            raise CollectionNotFoundError(self.collection)
        info = self._call(lambda c: c.describe_collection(self.collection))
        vector = next((f for f in info["fields"] if f["name"] == "vector"), None)
        dim = int(vector["params"]["dim"]) if vector else 0
        model = (info.get("properties") or {}).get("imgsearch.model")
        return (model or "(not an imgsearch collection)"), dim

    def _properties(self) -> dict[str, str]:
        return self._call(lambda c: c.describe_collection(self.collection)).get("properties") or {}

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
        if indexed_model != model or (dim is not None and indexed_dim != dim):
            raise ModelMismatchError(self.collection, indexed_model, indexed_dim, model, dim)
        if fingerprint is None:
            return
        recorded = self._properties().get(_FINGERPRINT_PROPERTY)
        if recorded is None:
            if not record_missing:
                return
            value = json.dumps([round(float(v), 5) for v in fingerprint])
            self._call(lambda c: c.alter_collection_properties(self.collection, properties={_FINGERPRINT_PROPERTY: value}))
            return
        if not fingerprints_match(json.loads(recorded), fingerprint):
            raise WeightsMismatchError(self.collection, model)

    def drop(self) -> None:
        self._call(lambda c: c.drop_collection(self.collection))
        self._bump_generation()

    # Writes

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            payload = [{**row, "vector": np.asarray(row["vector"], dtype=np.float32).tolist()} for row in rows]
            self._call(lambda c: c.upsert(self.collection, payload))
            self._bump_generation()

    def delete(self, ids: Sequence[str], batch: int = 1000) -> None:
        for start in range(0, len(ids), batch):
            chunk = list(ids[start:start + batch])
            self._call(lambda c, chunk=chunk: c.delete(self.collection, ids=chunk))
            self._bump_generation()

    # Change tracking for readers that cache (embedded mode only)

    def _generation_file(self) -> Path | None:
        if not self.is_embedded:
            return None
        return Path(self.milvus_uri).expanduser().resolve() / f"imgsearch-generation-{self.collection}"

    def generation(self) -> str:
        """A token that changes after every write by any imgsearch process to this embedded collection."""
        path = self._generation_file()
        try:
            return path.read_text() if path else ""
        except FileNotFoundError:
            return ""

    def _bump_generation(self) -> None:
        path = self._generation_file()
        if path is None:
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, path)

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
        """Rows matching ``filter_expr`` (all by default), with ``fields`` (all metadata by default)."""
        output_fields = list(fields or METADATA_FIELDS) + (["vector"] if with_vectors else [])
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
        self, vectors: np.ndarray, limit: int, offset: int = 0, filter_expr: str = ""
    ) -> list[list[Hit]]:
        """Nearest rows by cosine similarity, best first, one list per query vector."""
        results = self._call(lambda c: c.search(
            self.collection, data=np.asarray(vectors).tolist(), limit=limit, offset=offset,
            filter=filter_expr, output_fields=METADATA_FIELDS,
            search_params={"metric_type": "COSINE", "params": search_params(self.index_type, limit + offset)},
        ))
        return [[Hit(id=hit["id"], score=float(hit["distance"]), row=dict(hit["entity"])) for hit in hits]
                for hits in results]


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


def _is_connection_error(exc: MilvusException) -> bool:
    text = f"{exc.code} {exc.message}".lower()
    return any(marker in text for marker in ("unavailable", "connect", "deadline", "closed", "socket"))
