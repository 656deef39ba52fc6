"""Collections as imgsearch wrote them before schema versions were read (schema 1, commit 2c4cd64).

The schema and the row below are copied from that code, so that the upgrade is tested against what real
users have on disk: the collection under the configured name itself (no alias), eight metadata columns, and
the properties that version kept.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

from pymilvus import DataType, MilvusClient

from imgsearch.media.images import decode_image
from imgsearch.model.embedder import Embedder
from imgsearch.store import MilvusStore
from imgsearch.store.fields import content_hash


def v1_image_id(path: str) -> str:
    """indexer/plan.py's image_id at 2c4cd64, kept as it was: a change of ids would duplicate every row."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def create_v1_collection(store: MilvusStore, model: str, dim: int, fingerprint=None) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("path", DataType.VARCHAR, max_length=4096)
    schema.add_field("size", DataType.INT64)
    schema.add_field("mtime_ns", DataType.INT64)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("width", DataType.INT64)
    schema.add_field("height", DataType.INT64)
    schema.add_field("indexed_at", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index_params = MilvusClient.prepare_index_params()
    index_params.add_index("vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    identity = {
        "imgsearch.schema": "1",
        "imgsearch.model": model,
        "imgsearch.dim": str(dim),
        "imgsearch.created": uuid.uuid4().hex,
    }
    if fingerprint is not None:
        identity["imgsearch.fingerprint"] = json.dumps([round(float(v), 5) for v in fingerprint])
    store._call(
        lambda c: c.create_collection(
            store.collection,
            schema=schema,
            properties=identity,
            description=f"imgsearch images embedded by {model}",
            consistency_level="Strong",
        )
    )
    store._call(lambda c: c.create_index(store.collection, index_params, sync=False))
    store._call(lambda c: c.load_collection(store.collection))


def index_v1(store: MilvusStore, encoder: Embedder, paths: list[Path], roots: list[str]) -> list[dict]:
    """What `imgsearch index` of schema 1 wrote for ``paths``: the rows, with their vectors."""
    create_v1_collection(store, encoder.name, encoder.dim, encoder.fingerprint)
    rows = []
    for path in paths:
        data = path.read_bytes()
        decoded = decode_image(data, str(path), encoder.image_size, 10**8)
        stat = path.stat()
        rows.append(
            {
                "id": v1_image_id(str(path)),
                "path": str(path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "content_hash": content_hash(data),
                "width": decoded.width,
                "height": decoded.height,
                "indexed_at": int(time.time()),
                "vector": encoder.embed_images([decoded.image])[0],
            }
        )
    store._call(lambda c: c.upsert(store.collection, rows))
    store._call(
        lambda c: c.alter_collection_properties(
            store.collection, properties={"imgsearch.roots": json.dumps(sorted(roots))}
        )
    )
    return rows
