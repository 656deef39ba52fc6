"""Indexing throughput: imgsearch against a naive loop and against the bare model, in one run.

Builds a CLIP with the real ViT-B/32 architecture and random weights (same compute
as the real model; no download), writes photo-sized JPEGs (4000x3000), then times:

- imgsearch: `run_index` from JPEG files to rows in Milvus Lite (model already loaded), once per precision
  (fp32, and each of bf16 / int8 this CPU runs well: IMGSEARCH_PRECISION), with the stage profile;
- naive: PIL open -> SentenceTransformer.encode(list of PIL images) -> MilvusClient.insert, batches of 32;
- bare model: SentenceTransformer.encode in fp32 on images already resized to the model's input.

Each precision's rows are compared with fp32's: top-10 image -> image and text -> image neighbour overlap
over the indexed photos, and the lowest cosine between a photo's two vectors. `auto` is what the probe picks.

Usage: python bench/index_throughput.py [--images 64] [--precisions fp32 bf16 int8] [--out bench/results/index_throughput.json]
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


QUERIES = ["a photo of a dog", "a red bicycle leaning on a wall", "mountains at sunset", "a bowl of fruit",
           "a crowded street at night", "a baby laughing", "a white cat on a sofa", "a map of the city"]


def label(backend: str, precision: str) -> str:
    return precision if backend == "torch" else f"{backend} {precision}"


def bench_imgsearch(paths, model_dir, data_dir, batch_size, workers, precision="fp32", backend="torch"):
    """JPEG files to rows in Milvus Lite; also the rows' vectors (by path) and the query texts' vectors."""
    from imgsearch_core.encoder import load_embedder
    from imgsearch_core.settings import Settings
    from imgsearch_core.store import MilvusStore, release_hosted
    from indexer.runner import run_index

    settings = Settings(milvus_uri=str(data_dir / f"imgsearch-{backend}-{precision}.db"), model=str(model_dir),
                        device="cpu", batch_size=batch_size, decode_workers=workers, precision=precision,
                        backend=backend, cache_dir=data_dir / "cache")
    encoder = load_embedder(settings)
    encoder.embed_images([Image.new("RGB", (224, 224))] * 2)  # first-call costs apart: a real run amortises them
    store = MilvusStore.from_settings(settings)
    started = time.perf_counter()
    report = run_index([str(paths[0].parent)], settings, encoder, store, profile=True)
    elapsed = time.perf_counter() - started
    assert report.embedded == len(paths), report
    count = store.count()
    rows = sorted(store.iter_rows(fields=["path"], with_vectors=True), key=lambda r: r["path"])
    store.close()
    release_hosted(settings.milvus_uri)
    vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    return ({"backend": backend, "precision": precision, "images_per_s": len(paths) / elapsed, "seconds": elapsed, "rows": count,
             "profile": {name: stage["share_of_wall"] for name, stage in report.profile["stages"].items()}},
            vectors, encoder.embed_texts(QUERIES).vectors)


def agreement_with_fp32(fp32, other) -> dict:
    from imgsearch_core.precision import min_cosine, top_k_overlap

    (images, texts), (other_images, other_texts) = fp32, other
    return {"image_to_image_top10": top_k_overlap(images, images, other_images, other_images, 10, same_set=True),
            "text_to_image_top10": top_k_overlap(texts, images, other_texts, other_images, 10),
            "min_cosine": min_cosine(images, other_images)}


def auto_choice(model_dir, data_dir, batch_size) -> str:
    from imgsearch_core.encoder import SentenceTransformerEmbedder

    encoder = SentenceTransformerEmbedder(str(model_dir), device="cpu", batch_size=batch_size, precision="auto",
                                          cache_dir=data_dir / "auto-cache")
    return encoder.precision_choice.describe()


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
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "int8"],
                        help="default: fp32 and each setting this CPU runs well")
    parser.add_argument("--out", type=Path, default=Path("bench/results/index_throughput.json"))
    args = parser.parse_args()

    import torch
    from local_clip import build_local_clip  # bench/local_clip.py, beside this script
    from sentence_transformers import SentenceTransformer

    from imgsearch_core.precision import candidates, cpu_flags

    precisions = args.precisions or ["fp32", *candidates("cpu", cpu_flags())]
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the others are compared with it

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print_machine(machine_info())
        print("building random-weight ViT-B/32 ...", flush=True)
        model_dir = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        print(f"writing {args.images} JPEGs of 4000x3000 ...", flush=True)
        paths = make_photos(tmp / "photos", args.images)
        model = SentenceTransformer(str(model_dir), device="cpu")

        bare = bench_bare(paths, model, 224)
        print(f"bare model fp32 (pre-resized):       {bare['images_per_s']:6.2f} img/s", flush=True)
        runs, embeddings = {}, {}
        for precision in precisions:
            run, vectors, texts = bench_imgsearch(paths, model_dir, tmp, args.batch_size, args.workers, precision)
            embeddings[precision] = (vectors, texts)
            if precision != "fp32":
                run["agreement_with_fp32"] = agreement_with_fp32(embeddings["fp32"], embeddings[precision])
            runs[precision] = run
            agreement = run.get("agreement_with_fp32")
            print(f"imgsearch {precision:>4} (JPEG -> Milvus):    {run['images_per_s']:6.2f} img/s "
                  f"= {run['images_per_s'] / bare['images_per_s']:.2f} x bare fp32"
                  + (f"; top-10 overlap image {agreement['image_to_image_top10']:.3f}, text "
                     f"{agreement['text_to_image_top10']:.3f}, min cosine {agreement['min_cosine']:.4f}"
                     if agreement else ""), flush=True)
            print("    profile (share of wall): " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in run["profile"].items()),
                  flush=True)
        naive = bench_naive(paths, model, tmp)
        print(f"naive loop fp32:                     {naive['images_per_s']:6.2f} img/s", flush=True)
        auto = auto_choice(model_dir, tmp, args.batch_size)
        print(auto, flush=True)
        ours = runs["fp32"]
        # The best setting among those that pass the agreement gate (top-10 overlap >= 0.95 both ways).
        gated = [r for r in runs.values() if "agreement_with_fp32" not in r or (
            r["agreement_with_fp32"]["image_to_image_top10"] >= 0.95 and r["agreement_with_fp32"]["text_to_image_top10"] >= 0.95)]
        best = max(gated, key=lambda r: r["images_per_s"])

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
        "imgsearch_by_precision": runs,
        "auto": auto,
        "naive": naive,
        "bare_model": bare,
        "ratio_vs_bare_model": ours["images_per_s"] / bare["images_per_s"],
        "ratio_vs_naive": ours["images_per_s"] / naive["images_per_s"],
        "best_precision": best["precision"],
        "best_ratio_vs_bare_fp32": best["images_per_s"] / bare["images_per_s"],
    }
    print(f"imgsearch fp32 / bare model = {result['ratio_vs_bare_model']:.2f}   imgsearch fp32 / naive = "
          f"{result['ratio_vs_naive']:.2f}   best ({best['precision']}) / bare fp32 = {result['best_ratio_vs_bare_fp32']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
