"""The same queries on a Milvus server: the C++ standalone that the tests start, on 127.0.0.1, filled with the
vectors of bench/query_latency.py, its index built, then `imgsearch serve` against it (the vector copy is off on
a server). Adds what an exact scan never needs measuring: the index's recall@10 against exact search.

Used by ``query_latency.py --milvus standalone``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from resources import folder_mb, rss_mb

RECALL_QUERIES = 200


def clustered_vectors(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors shaped more like a photo library's embeddings than random ones: a direction they all share
    (CLIP's image embeddings sit in a narrow cone), 2,000 subjects in a 64-dimensional latent space, and each
    picture a variation of its subject. Random 512-d vectors have no neighbours to speak of, which no real
    collection looks like and which graph indexes find worst."""
    latent, subjects = 64, 2000
    mixing = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = rng.standard_normal((subjects, latent)).astype(np.float32)
    shared = rng.standard_normal(dim).astype(np.float32)
    shared /= np.linalg.norm(shared)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):
        n = min(rows, start + 100_000) - start
        z = centres[rng.integers(0, subjects, n)] + 0.5 * rng.standard_normal((n, latent)).astype(np.float32)
        v = z @ mixing
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v += 0.7 * shared + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
        out[start : start + n] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def start_standalone(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """The C++ standalone on free ports under ``data_dir``; (process, uri)."""
    from tests.support.milvus import milvus_command, milvus_ready
    from tests.support.processes import start_server

    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ETCD_CONFIG_PATH": str(data_dir / "etcd.yaml")}
    process, port = start_server(milvus_command("milvus-2.3-standalone", data_dir), env, milvus_ready, timeout_s=180)
    return process, f"http://127.0.0.1:{port}"


def stop_standalone(process: subprocess.Popen) -> None:
    from tests.support.processes import stop_process

    stop_process(process, grace_s=20)


def wait_for_index(uri: str, collection: str = "images", timeout_s: float = 3600) -> float:
    """Seconds until the server's vector index covers every row (it builds sealed segments' indexes in the
    background; a search before then scans the rest exactly, which flatters recall)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    started = time.perf_counter()
    try:
        client.flush(collection)
        name = next(index for index in client.list_indexes(collection) if "sparse" not in index)
        while time.perf_counter() - started < timeout_s:
            info = client.describe_index(collection, name)
            if int(info.get("pending_index_rows", 1)) == 0 and int(info.get("indexed_rows", 0)) > 0:
                break
            time.sleep(2)
        client.load_collection(collection)
    finally:
        client.close()
    return time.perf_counter() - started


def recall_at_10(uri: str, vectors: np.ndarray, index_type: str, seed: int = 5) -> dict:
    """imgsearch's own search on the server (``MilvusStore.search``, the breadth it asks for at 20 results)
    against the exact top 10 of the same vectors, over queries near stored rows and random ones."""
    from imgsearch.store import MilvusStore

    store = MilvusStore(uri, "images", index_type=index_type)
    rng = np.random.default_rng(seed)
    near = vectors[rng.choice(len(vectors), RECALL_QUERIES // 2, replace=False)]
    near = near + 0.5 * rng.standard_normal(near.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
    spread = rng.standard_normal((RECALL_QUERIES // 2, vectors.shape[1])).astype(np.float32)
    queries = np.concatenate([near, spread])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found, timings = [], []
    try:
        for query in queries:
            started = time.perf_counter()
            hits = store.search(query[None, :], 20)[0]
            timings.append((time.perf_counter() - started) * 1000)
            found.append([int(hit.row["path"].rsplit("img", 1)[1].split(".")[0]) for hit in hits[:10]])
    finally:
        store.close()
    exact = np.argsort(-(vectors @ queries.T), axis=0)[:10].T
    overlaps = [len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, exact)]
    half = len(overlaps) // 2
    return {
        "recall_at_10": round(float(np.mean(overlaps)), 4),
        "recall_at_10_near_rows": round(float(np.mean(overlaps[:half])), 4),
        "recall_at_10_random": round(float(np.mean(overlaps[half:])), 4),
        "store_search_p50_ms": round(float(np.median(timings)), 2),
        "queries": len(queries),
        "by_breadth": breadth_sweep(uri, queries, exact, index_type),
    }


def breadth_sweep(uri: str, queries: np.ndarray, exact: np.ndarray, index_type: str) -> dict:
    """Recall@10 and ms a query at wider search breadths than imgsearch's (HNSW ef, IVF nprobe)."""
    from pymilvus import MilvusClient

    name = {"HNSW": "ef", "IVF_FLAT": "nprobe"}.get(index_type)
    if name is None:
        return {}
    client, out = MilvusClient(uri=uri), {}
    try:
        for breadth in (64, 128, 256, 512) if name == "ef" else (16, 32, 64, 128):
            started = time.perf_counter()
            results = client.search(
                "images",
                data=queries.tolist(),
                anns_field="vector",
                limit=10,
                output_fields=["path"],
                search_params={"metric_type": "COSINE", "params": {name: breadth}},
                consistency_level="Session",
            )
            ms = (time.perf_counter() - started) * 1000 / len(queries)
            found = [[int(hit["entity"]["path"].rsplit("img", 1)[1].split(".")[0]) for hit in hits] for hits in results]
            recall = np.mean([len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, exact)])
            out[f"{name}={breadth}"] = {"recall_at_10": round(float(recall), 4), "ms_per_query_batched": round(ms, 2)}
    finally:
        client.close()
    return out


def measure_standalone(
    args: argparse.Namespace,
    tmp: Path,
    rows: int,
    model_dir: Path,
    cache_dir: Path,
    fill_collection: Callable[..., np.ndarray],
    serve_and_measure: Callable[..., None],
) -> dict:
    """The Milvus standalone: insert rate, the time its index takes to cover every row, recall@10 of
    imgsearch's search there, then the served latencies (no vector copy on a server)."""
    data_dir = tmp / f"standalone{rows}"
    print(f"\n== {rows:,} vectors: filling a Milvus standalone ({args.index_type}) ...", flush=True)
    milvus, uri = start_standalone(data_dir)
    try:
        started = time.perf_counter()
        vectors = fill_collection(uri, model_dir, 512, rows, args.index_type, args.vectors)
        entry = {"milvus": "standalone", "index_type": args.index_type}
        entry["insert_rows_per_s"] = round(rows / (time.perf_counter() - started))
        entry["index_build_s"] = round(wait_for_index(uri), 1)
        entry["data_dir_mb"] = round(folder_mb(data_dir))
        entry["milvus_rss_mb"] = rss_mb(milvus.pid)
        print(
            f"inserted at {entry['insert_rows_per_s']:,} rows/s; index covered every row {entry['index_build_s']} s "
            f"later; data directory {entry['data_dir_mb']:,} MB; Milvus resident memory {entry['milvus_rss_mb']:,} MB",
            flush=True,
        )
        entry["recall"] = recall_at_10(uri, vectors, args.index_type)
        print(f"recall: {entry['recall']}", flush=True)
        serve_and_measure(args, entry, uri, vectors, model_dir, cache_dir, "off", args.requests, rows)
    finally:
        stop_standalone(milvus)
    return entry
