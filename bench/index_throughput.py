"""Indexing throughput: imgsearch against a naive loop and against the bare model, in one run.

Builds a CLIP with the real ViT-B/32 architecture and random weights (same compute
as the real model; no download), writes photo-sized JPEGs (4000x3000), then times:

- imgsearch: `run_index` from JPEG files to rows in Milvus Lite (model already loaded);
- naive: PIL open -> SentenceTransformer.encode(list of PIL images) -> MilvusClient.insert, batches of 32;
- bare model: SentenceTransformer.encode on images already resized to the model's input.

Usage: python bench/index_throughput.py [--images 64] [--out bench/results/index_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info, print_machine  # noqa: E402
from PIL import Image  # noqa: E402


def make_photos(folder: Path, count: int, size=(4000, 3000)) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields with grain, so JPEG sizes are realistic (~1-3 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        grain = Image.effect_noise(size, 24).convert("RGB")
        photo = Image.blend(base, grain, 0.15)
        path = folder / f"photo_{i:04d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def bench_imgsearch(paths, model_dir, data_dir, batch_size, workers):
    from imgsearch_core.encoder import load_embedder
    from imgsearch_core.settings import Settings
    from imgsearch_core.store import MilvusStore, release_hosted
    from indexer.runner import run_index

    settings = Settings(milvus_uri=str(data_dir / "imgsearch.db"), model=str(model_dir), device="cpu",
                        batch_size=batch_size, decode_workers=workers)
    encoder = load_embedder(settings)
    store = MilvusStore.from_settings(settings)
    started = time.perf_counter()
    report = run_index([str(paths[0].parent)], settings, encoder, store)
    elapsed = time.perf_counter() - started
    assert report.embedded == len(paths), report
    count = store.count()
    store.close()
    release_hosted(settings.milvus_uri)
    return {"images_per_s": len(paths) / elapsed, "seconds": elapsed, "rows": count}


def bench_naive(paths, model, data_dir):
    from pymilvus import MilvusClient

    client = MilvusClient(str(data_dir / "naive.db"))
    dim = model.encode(["x"]).shape[1]
    client.create_collection("naive", dimension=dim, metric_type="COSINE")
    started = time.perf_counter()
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        images = [Image.open(p) for p in chunk]
        vectors = model.encode(images, batch_size=32, normalize_embeddings=True)
        client.insert("naive", [{"id": start + i, "vector": v.tolist(), "path": str(p)}
                                for i, (v, p) in enumerate(zip(vectors, chunk))])
    elapsed = time.perf_counter() - started
    client.close()
    return {"images_per_s": len(paths) / elapsed, "seconds": elapsed}


def bench_bare(paths, model, image_size):
    resized = []
    for p in paths:
        with Image.open(p) as image:
            image.draft("RGB", (image_size, image_size))
            image = image.convert("RGB")
            image.thumbnail((image_size * 10, image_size))  # shortest side = image_size
            resized.append(image.copy())
    started = time.perf_counter()
    model.encode(resized, batch_size=32, normalize_embeddings=True)
    elapsed = time.perf_counter() - started
    return {"images_per_s": len(paths) / elapsed, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/index_throughput.json"))
    args = parser.parse_args()

    import torch
    from local_clip import build_local_clip  # bench/local_clip.py, beside this script
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print_machine(machine_info())
        print("building random-weight ViT-B/32 ...", flush=True)
        model_dir = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        print(f"writing {args.images} JPEGs of 4000x3000 ...", flush=True)
        paths = make_photos(tmp / "photos", args.images)
        model = SentenceTransformer(str(model_dir), device="cpu")

        bare = bench_bare(paths, model, 224)
        print(f"bare model (pre-resized):  {bare['images_per_s']:6.2f} img/s", flush=True)
        ours = bench_imgsearch(paths, model_dir, tmp, args.batch_size, args.workers)
        print(f"imgsearch (JPEG -> Milvus): {ours['images_per_s']:6.2f} img/s", flush=True)
        naive = bench_naive(paths, model, tmp)
        print(f"naive loop:                {naive['images_per_s']:6.2f} img/s", flush=True)

    result = {
        "benchmark": "index_throughput",
        "model": "ViT-B/32 architecture, random weights",
        "images": args.images,
        "image_size": "4000x3000 JPEG",
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        **machine_info(),
        "imgsearch": ours,
        "naive": naive,
        "bare_model": bare,
        "ratio_vs_bare_model": ours["images_per_s"] / bare["images_per_s"],
        "ratio_vs_naive": ours["images_per_s"] / naive["images_per_s"],
    }
    print(f"imgsearch / bare model = {result['ratio_vs_bare_model']:.2f}   imgsearch / naive = {result['ratio_vs_naive']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
