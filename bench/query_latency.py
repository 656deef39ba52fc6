"""Query latency of `POST /search` with text, against the bare costs it cannot avoid, in one run.

For each collection size (default 10,000 and 100,000 random 512-d vectors in Milvus Lite) it starts a
real `imgsearch serve` process (uvicorn) with a random-weight ViT-B/32, and measures p50/p95/p99 at 1 and
at 8 concurrent clients, with the in-memory vector copy on (the default) and off (every query to Milvus
Lite). In the same run it times the bare text encode and an exact numpy search over the same vectors,
and prints p50 / (encode + numpy). Then a load of --load-seconds at 8 clients counts errors.

The server and the bare encode run at --precision (default auto, what a user gets) with IMGSEARCH_BACKEND auto,
so their text tower runs the setting measured fastest for one query (imgsearch/model/text_tower.py). First, that
measurement: each text setting this CPU runs well on one text and on eight, beside torch fp32, with its agreement;
--text-only stops there.

Usage: python bench/query_latency.py [--sizes 10000 100000] [--load-seconds 60] [--precision auto] [--text-only]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from resources import folder_mb, rss_mb  # noqa: E402  (bench/, the script's own folder)

from imgsearch.model.agreement import TEXT_PROBE  # noqa: E402

if TYPE_CHECKING:
    from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
    from imgsearch.model.text_tower import TextChoice

QUERIES = TEXT_PROBE[:10]  # the queries people type; the text tower was chosen on these too


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "p50_ms": round(at(0.50), 2),
        "p95_ms": round(at(0.95), 2),
        "p99_ms": round(at(0.99), 2),
        "requests": len(ordered),
    }


def fill_collection(
    uri: str, model_dir: Path, dim: int, rows: int, index_type: str = "HNSW", kind: str = "random"
) -> np.ndarray:
    from imgsearch.model.embedder import model_identity
    from imgsearch.store import MilvusStore, release_hosted

    store = MilvusStore(uri, "images", index_type=index_type)
    store.ensure_collection(model_identity(str(model_dir)), dim)
    from server_path import clustered_vectors

    rng = np.random.default_rng(0)
    if kind == "clustered":
        vectors = clustered_vectors(rows, dim, rng)
    else:
        vectors = rng.standard_normal((rows, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    from imgsearch.store.fields import FileFacts, make_row

    for start in range(0, rows, 5000):
        store.upsert(
            [
                make_row(
                    FileFacts(
                        f"/library/{i % 100}/img{i}.jpg",
                        1,
                        1,
                        f"{i:032x}",
                        4000,
                        3000,
                        1_500_000_000 + i,
                        "exif",
                        "JPEG",
                    ),
                    vectors[i],
                )
                for i in range(start, min(rows, start + 5000))
            ]
        )
    store.flush()
    store.close()
    release_hosted(uri)
    return vectors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    uri: str, model_dir: Path, vector_cache: str, precision: str, cache_dir: Path, index_type: str = "HNSW"
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "IMGSEARCH_INDEX_TYPE": index_type,
        "IMGSEARCH_MILVUS_URI": uri,
        "IMGSEARCH_MODEL": str(model_dir),
        "IMGSEARCH_DEVICE": "cpu",
        "IMGSEARCH_VECTOR_CACHE": vector_cache,
        "IMGSEARCH_PRECISION": precision,
        "IMGSEARCH_CACHE_DIR": str(cache_dir),
    }
    binary = Path(sys.executable).parent / "imgsearch"
    process = subprocess.Popen(
        [str(binary), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{base}/health", timeout=5).json()
            if health["vector_cache"] in ("fresh", "off"):
                return process, base
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not get ready")


def measure(base: str, clients: int, requests_per_client: int) -> tuple[dict, int]:
    """Percentiles of the wall time per request seen by ``clients`` concurrent clients, with the p50 of the time
    the server says it spent in the search service (``took_ms``: the rest is HTTP, JSON and validation); and the
    number of errors."""
    samples: list[float] = []
    took: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(offset: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in range(requests_per_client):
                started = time.perf_counter()
                response = http.post("/search", json={"text": QUERIES[(offset + i) % len(QUERIES)], "limit": 20})
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    samples.append(elapsed)
                    errors += response.status_code != 200
                    if response.status_code == 200:
                        took.append(response.json()["took_ms"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**percentiles(samples), "service_p50_ms": round(statistics.median(took), 2) if took else None}, errors


def load(base: str, clients: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            i = 0
            while time.monotonic() < stop:
                try:
                    ok = http.post("/search", json={"text": QUERIES[(offset + i) % len(QUERIES)]}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["requests"] += 1
                    counts["errors"] += not ok
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**counts, "seconds": seconds, "clients": clients, "requests_per_s": round(counts["requests"] / seconds, 1)}


_ENCODERS: dict = {}
SERVED_BACKEND = "auto"  # the server's default: with precision auto, the text tower is chosen for one query


def encoder_at(model_dir: Path, precision: str, cache_dir: Path, backend: str = "torch") -> SentenceTransformerEmbedder:
    from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder

    key = (model_dir, precision, backend)
    if key not in _ENCODERS:
        _ENCODERS[key] = SentenceTransformerEmbedder(
            str(model_dir), device="cpu", precision=precision, cache_dir=cache_dir, backend=backend
        )
    return _ENCODERS[key]


def text_settings(choice: TextChoice) -> dict:
    """The text tower's trials (imgsearch/model/text_tower.py: one text and eight, against torch fp32), by label."""
    fp32 = choice.trials[0].one_ms
    return {
        t.label: {
            "text_encode_ms": round(t.one_ms, 2),
            "eight_texts_ms": round(t.eight_ms, 2),
            "speedup_vs_fp32": round(fp32 / t.one_ms, 2),
            "agrees_with_fp32": t.agrees,
        }
        for t in choice.trials
    }


def bare_costs(model_dir: Path, vectors: np.ndarray, precision: str, cache_dir: Path, repeats: int = 30) -> dict:
    encoder = encoder_at(model_dir, precision, cache_dir, SERVED_BACKEND)  # texts as the server runs them
    # Two separate loops: right after a BLAS call OpenBLAS threads spin for a while and would slow the encode.
    encode_ms, numpy_ms, queries = [], [], []
    for i in range(repeats):
        started = time.perf_counter()
        queries.append(encoder.embed_texts([QUERIES[i % len(QUERIES)]]).vectors[0])
        encode_ms.append((time.perf_counter() - started) * 1000)
    for query in queries:
        started = time.perf_counter()
        scores = vectors @ query
        np.argpartition(-scores, 20)[:20]
        numpy_ms.append((time.perf_counter() - started) * 1000)
    return {
        "text_encode_ms": round(statistics.median(encode_ms), 2),
        "numpy_exact_ms": round(statistics.median(numpy_ms), 2),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=100, help="requests per client with the cache on")
    parser.add_argument("--uncached-requests", type=int, default=20, help="requests per client with the cache off")
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "int8"],
        help="IMGSEARCH_PRECISION of the server and of the bare encode (default auto)",
    )
    parser.add_argument("--text-only", action="store_true", help="time the text encoder per setting, nothing else")
    parser.add_argument(
        "--milvus",
        choices=["lite", "standalone"],
        default="lite",
        help="lite: the embedded default, with the vector copy on and off; standalone: the C++ Milvus server "
        "the tests start, its index built, with recall@10 against exact search",
    )
    parser.add_argument("--index-type", default="HNSW", help="the server's vector index (IMGSEARCH_INDEX_TYPE)")
    parser.add_argument(
        "--vectors",
        choices=["random", "clustered"],
        default="random",
        help="standalone's vectors: random (no structure: an index's worst case) or clustered like a photo "
        "library's (bench/server_path.py)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/query_latency.json")
    return parser.parse_args()


def print_text_encoders(by_setting: dict) -> None:
    for label, figures in by_setting.items():
        print(
            f"text encode {label:>13}: {figures['text_encode_ms']:6.2f} ms, eight texts {figures['eight_texts_ms']:6.2f} "
            f"ms  ({figures['speedup_vs_fp32']:.2f} x torch fp32"
            + ("" if figures["agrees_with_fp32"] else ", below the agreement gate")
            + ")",
            flush=True,
        )


def stages(stats: dict, bare: dict) -> dict:
    """Where one request's time goes (p50s, ms, and each one's share): the text encode and the exact scan as
    measured bare, the rest of the search service (thread hops, the batcher, filters, building hits), and HTTP
    (uvicorn, request validation, JSON of the response) as what the client waits beyond the service's took_ms."""
    wall, service = stats["p50_ms"], stats["service_p50_ms"] or 0.0
    parts = {
        "text encode": bare["text_encode_ms"],
        "scan": bare["numpy_exact_ms"],
        "rest of the service": max(0.0, service - bare["text_encode_ms"] - bare["numpy_exact_ms"]),
        "http, validation, json": max(0.0, wall - service),
    }
    return {name: f"{ms:.1f} ms ({ms / wall:.0%})" for name, ms in parts.items()}


def measure_served(
    args: argparse.Namespace,
    base: str,
    cache: str,
    per_client: int,
    rows: int,
    bare: dict,
    entry: dict,
) -> None:
    """p50/p95/p99 at 1 and 8 clients against the running server, and the load on the largest size, into ``entry``."""
    measure(base, 1, 5)  # warm-up
    floor = bare["text_encode_ms"] + bare["numpy_exact_ms"]
    for clients in (1, 8):
        stats, errors = measure(base, clients, max(3, per_client // clients * (2 if clients > 1 else 1)))
        stats["errors"] = errors
        stats["p50_over_floor"] = round(stats["p50_ms"] / floor, 2)
        entry[f"cache_{cache}_clients_{clients}"] = stats
        if clients == 1:
            entry[f"cache_{cache}_stages"] = stages(stats, bare)
            print("  stages at 1 client: " + ", ".join(f"{k} {v}" for k, v in entry[f"cache_{cache}_stages"].items()))
        print(
            f"vector cache {cache:3s} {clients} client(s): p50 {stats['p50_ms']:7.1f}  "
            f"p95 {stats['p95_ms']:7.1f}  p99 {stats['p99_ms']:7.1f} ms  "
            f"p50/(encode+numpy) {stats['p50_over_floor']:5.2f}  errors {errors}",
            flush=True,
        )
    one, eight = entry[f"cache_{cache}_clients_1"], entry[f"cache_{cache}_clients_8"]
    eight["p50_vs_one_client"] = round(eight["p50_ms"] / one["p50_ms"], 2)
    print(f"  8 clients' p50 = {eight['p50_vs_one_client']:.2f}x one client's (target: at most 2x)", flush=True)
    if cache == "on" and rows == max(args.sizes) and args.load_seconds > 0:
        entry["load"] = load(base, 8, args.load_seconds)
        print(f"load: {entry['load']}", flush=True)


def measure_size(args: argparse.Namespace, tmp: Path, rows: int, model_dir: Path, cache_dir: Path) -> dict:
    """One collection size: a server with the vector copy on, then off, each beside its bare costs (Milvus Lite);
    or the imgsearch server against a Milvus standalone, with the index's recall."""
    if args.milvus == "standalone":
        from server_path import measure_standalone

        return measure_standalone(args, tmp, rows, model_dir, cache_dir, fill_collection, serve_and_measure)
    uri = str(tmp / f"rows{rows}" / "milvus.db")
    print(f"\n== {rows:,} vectors: filling Milvus Lite ...", flush=True)
    started = time.perf_counter()
    vectors = fill_collection(uri, model_dir, 512, rows)
    fill_s = time.perf_counter() - started
    entry = {"insert_rows_per_s": round(rows / fill_s), "data_dir_mb": round(folder_mb(Path(uri)))}
    print(f"inserted at {entry['insert_rows_per_s']:,} rows/s; data directory {entry['data_dir_mb']:,} MB", flush=True)
    for cache, per_client in (("on", args.requests), ("off", args.uncached_requests)):
        serve_and_measure(args, entry, uri, vectors, model_dir, cache_dir, cache, per_client, rows)
    return entry


def serve_and_measure(
    args: argparse.Namespace,
    entry: dict,
    uri: str,
    vectors: np.ndarray,
    model_dir: Path,
    cache_dir: Path,
    cache: str,
    per_client: int,
    rows: int,
) -> None:
    """Start `imgsearch serve` on ``uri`` with the vector copy ``cache``, and time it beside the bare costs."""
    started = time.perf_counter()
    process, base = start_server(uri, model_dir, cache, args.precision, cache_dir, args.index_type)
    entry[f"cache_{cache}_ready_s"] = round(time.perf_counter() - started, 1)
    entry[f"cache_{cache}_server_rss_mb"] = rss_mb(process.pid)
    print(
        f"server ready ({'vector copy loaded' if cache == 'on' else 'no copy'}) in "
        f"{entry[f'cache_{cache}_ready_s']} s; resident memory {entry[f'cache_{cache}_server_rss_mb']:,} MB",
        flush=True,
    )
    # The bare costs are timed right beside each configuration: this machine's speed drifts.
    bare = bare_costs(model_dir, vectors, args.precision, cache_dir)
    floor = bare["text_encode_ms"] + bare["numpy_exact_ms"]
    entry[f"cache_{cache}_bare"] = {**bare, "encode_plus_numpy_ms": round(floor, 2)}
    print(
        f"bare text encode {bare['text_encode_ms']} ms + exact numpy {bare['numpy_exact_ms']} ms = {floor:.1f} ms",
        flush=True,
    )
    try:
        measure_served(args, base, cache, per_client, rows, bare, entry)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    args = parse_args()

    from machine import machine_info, print_machine, write_result

    from tests.support.models import build_local_clip

    results = {
        "benchmark": "query_latency",
        "model": "ViT-B/32 architecture, random weights",
        **machine_info(),
        "sizes": {},
    }
    print_machine(results)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("building random-weight ViT-B/32 ...", flush=True)
        model_dir = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        cache_dir = tmp / "cache"
        served = encoder_at(model_dir, args.precision, cache_dir, SERVED_BACKEND)
        results["precision"] = served.precision
        if served.precision_choice:
            print(served.precision_choice.describe(), flush=True)
        # Measured here, so that every server below starts with it (cache_dir): the text tower's settings, timed
        # on one text and eight, each beside torch fp32.
        text = served.tune_text() if served.needs_text_tuning else served.text_choice
        if text is not None:
            results["text_encoder_by_setting"] = text_settings(text)
            print_text_encoders(results["text_encoder_by_setting"])
            print(text.describe(), flush=True)
        results["text_runs"] = f"{served.text_backend} {served.text_precision}"
        if args.text_only:
            args.sizes = []
        for rows in args.sizes:
            results["sizes"][str(rows)] = measure_size(args, tmp, rows, model_dir, cache_dir)
    write_result(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
