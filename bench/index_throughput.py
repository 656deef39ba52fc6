"""Indexing throughput: imgsearch against a naive loop and against the bare model, in one run.

Builds a CLIP with the real ViT-B/32 architecture and random weights (same compute
as the real model; no download), writes photo-sized JPEGs (4000x3000), then times:

- imgsearch: `run_index` from JPEG files to rows in Milvus Lite (model already loaded), once per setting: torch
  fp32, and each precision this CPU runs well (IMGSEARCH_PRECISION) in torch and in each installed backend
  (IMGSEARCH_BACKEND=onnx, openvino), with the stage profile;
- naive: PIL open -> SentenceTransformer.encode(list of PIL images) -> MilvusClient.insert, batches of 32;
- bare model: SentenceTransformer.encode in fp32 on images already resized to the model's input.

The bare model and the settings are timed side by side in each of `--rounds` rounds; the best round of each
counts. Each setting's rows are compared with torch fp32's: top-10 image -> image and text -> image neighbour overlap
over the indexed photos, and the lowest cosine between a photo's two vectors. `auto` is what the probe picks.

The photos are 12 MP crops of the real photographs that scikit-learn and matplotlib ship (`--photos fields`:
smooth random colour fields, the set before 2026-12-04, on which every setting's text -> image neighbours are
near ties; see README).

Usage: python bench/index_throughput.py [--images 64] [--settings torch:fp32 onnx:int8] [--rounds 2]
       [--photos crops|fields] [--out bench/results/index_throughput.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info, print_machine, write_result  # noqa: E402
from PIL import Image  # noqa: E402

from tests.support.photos import QUERY_TEXTS, make_photos  # noqa: E402

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def bench_imgsearch(
    paths: list[Path],
    model_dir: Path,
    data_dir: Path,
    batch_size: int,
    workers: int,
    precision: str = "fp32",
    backend: str = "torch",
    round_: int = 0,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """JPEG files to rows in Milvus Lite; also the rows' vectors (by path) and the query texts' vectors."""
    from imgsearch.indexer.runner import run_index
    from imgsearch.model.loading import load_embedder
    from imgsearch.settings import Settings
    from imgsearch.store import MilvusStore, release_hosted

    settings = Settings(
        milvus_uri=str(data_dir / f"imgsearch-{backend}-{precision}-{round_}.db"),
        model=str(model_dir),
        device="cpu",
        batch_size=batch_size,
        decode_workers=workers,
        precision=precision,
        backend=backend,
        cache_dir=data_dir / "cache",
        ocr="off",  # the embedding stage alone; bench/text_stage.py measures the text stage beside it
    )
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
    return (
        {
            "backend": backend,
            "precision": precision,
            "images_per_s": len(paths) / elapsed,
            "seconds": elapsed,
            "rows": count,
            "profile": {name: stage["share_of_wall"] for name, stage in report.profile["stages"].items()},
        },
        vectors,
        encoder.embed_texts(QUERY_TEXTS).vectors,
    )


def agreement_with_fp32(fp32: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict:
    from imgsearch.model.agreement import min_cosine, top_k_overlap

    (images, texts), (other_images, other_texts) = fp32, other
    return {
        "image_to_image_top10": top_k_overlap(images, images, other_images, other_images, 10, same_set=True),
        "text_to_image_top10": top_k_overlap(texts, images, other_texts, other_images, 10),
        "min_cosine": min_cosine(images, other_images),
    }


def auto_choice(model_dir: Path, data_dir: Path, batch_size: int) -> str:
    from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder

    encoder = SentenceTransformerEmbedder(
        str(model_dir),
        device="cpu",
        batch_size=batch_size,
        precision="auto",
        backend="auto",
        cache_dir=data_dir / "auto-cache",
    )  # the defaults
    return encoder.precision_choice.describe()


def bench_naive(paths: list[Path], model: SentenceTransformer, data_dir: Path) -> dict:
    from pymilvus import MilvusClient

    client = MilvusClient(str(data_dir / "naive.db"))
    dim = model.encode(["x"]).shape[1]
    client.create_collection("naive", dimension=dim, metric_type="COSINE")
    started = time.perf_counter()
    for start in range(0, len(paths), 32):
        chunk = paths[start : start + 32]
        images = [Image.open(p) for p in chunk]
        vectors = model.encode(images, batch_size=32, normalize_embeddings=True)
        client.insert(
            "naive",
            [
                {"id": start + i, "vector": v.tolist(), "path": str(p)}
                for i, (v, p) in enumerate(zip(vectors, chunk, strict=False))
            ],
        )
    elapsed = time.perf_counter() - started
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    # Stopped now, not at exit: at exit it would write its data again into the temporary folder already removed.
    server_manager_instance.release_server(str(data_dir / "naive.db"))
    return {"images_per_s": len(paths) / elapsed, "seconds": elapsed}


def bench_bare(paths: list[Path], model: SentenceTransformer, image_size: int) -> dict:
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


def passes_gate(run: dict) -> bool:
    agreement = run.get("agreement_with_fp32")
    return agreement is None or (agreement["image_to_image_top10"] >= 0.95 and agreement["text_to_image_top10"] >= 0.95)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--settings",
        nargs="+",
        metavar="BACKEND:PRECISION",
        help="e.g. torch:fp32 torch:bf16 onnx:int8 openvino:bf16; default: torch fp32 and each setting "
        "this CPU runs well, in torch and each installed backend",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="the bare model and every setting are timed once per round, side by side; the best "
        "round of each counts (this machine's speed drifts by 20%% over minutes)",
    )
    parser.add_argument(
        "--photos",
        choices=["crops", "fields"],
        default="crops",
        help="crops of real photographs (default), or smooth colour fields, whose neighbours are near "
        "ties: see make_photos",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/index_throughput.json"))
    return parser.parse_args()


def run_rounds(
    args: argparse.Namespace,
    settings: list[tuple[str, str]],
    paths: list[Path],
    model_dir: Path,
    data_dir: Path,
    model: SentenceTransformer,
) -> tuple[dict, dict[str, dict]]:
    """The bare model and each setting, side by side in each round; the best round of each (bare, runs by label)."""
    from imgsearch.model.precision import setting_label

    bare, runs, embeddings = None, {}, {}
    for round_ in range(args.rounds):
        timed = bench_bare(paths, model, 224)
        print(f"round {round_ + 1}: bare model fp32 (pre-resized):   {timed['images_per_s']:6.2f} img/s", flush=True)
        bare = timed if bare is None or timed["images_per_s"] > bare["images_per_s"] else bare
        for backend, precision in settings:
            name = setting_label(backend, precision)
            run, vectors, texts = bench_imgsearch(
                paths, model_dir, data_dir, args.batch_size, args.workers, precision, backend, round_
            )
            embeddings[name] = (vectors, texts)
            if name != "fp32":
                run["agreement_with_fp32"] = agreement_with_fp32(embeddings["fp32"], embeddings[name])
            print(
                f"round {round_ + 1}: imgsearch {name:>13} (JPEG -> Milvus): {run['images_per_s']:6.2f} img/s",
                flush=True,
            )
            if name not in runs or run["images_per_s"] > runs[name]["images_per_s"]:
                runs[name] = run
    return bare, runs


def print_best(rounds: int, bare: dict, runs: dict[str, dict]) -> None:
    print(f"\nbest of {rounds} rounds; bare model fp32 (pre-resized): {bare['images_per_s']:6.2f} img/s")
    for name, run in runs.items():
        agreement = run.get("agreement_with_fp32")
        print(
            f"imgsearch {name:>13} (JPEG -> Milvus): {run['images_per_s']:6.2f} img/s "
            f"= {run['images_per_s'] / bare['images_per_s']:.2f} x bare fp32"
            + (
                f"; top-10 overlap image {agreement['image_to_image_top10']:.3f}, text "
                f"{agreement['text_to_image_top10']:.3f}, min cosine {agreement['min_cosine']:.4f}"
                + ("" if passes_gate(run) else " (below the gate)")
                if agreement
                else ""
            ),
            flush=True,
        )
        print(
            "    profile (share of wall): " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in run["profile"].items()),
            flush=True,
        )


def build_result(
    args: argparse.Namespace,
    torch_threads: int,
    ours: dict,
    runs: dict[str, dict],
    auto: str,
    naive: dict,
    bare: dict,
    best_name: str,
    best: dict,
) -> dict:
    return {
        "benchmark": "index_throughput",
        "model": "ViT-B/32 architecture, random weights",
        "images": args.images,
        "image_size": "4000x3000 JPEG",
        "photos": args.photos,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "torch_threads": torch_threads,
        **machine_info(),
        "imgsearch": ours,
        "rounds": args.rounds,
        "imgsearch_by_setting": runs,
        "auto": auto,
        "naive": naive,
        "bare_model": bare,
        "ratio_vs_bare_model": ours["images_per_s"] / bare["images_per_s"],
        "ratio_vs_naive": ours["images_per_s"] / naive["images_per_s"],
        "best_setting": best_name,
        "best_ratio_vs_bare_fp32": best["images_per_s"] / bare["images_per_s"],
    }


def main() -> int:
    args = parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from imgsearch.model.cpu import cpu_flags
    from imgsearch.model.precision import fast_settings
    from tests.support.models import build_local_clip

    settings = [tuple(s.split(":", 1)) for s in args.settings] if args.settings else fast_settings(cpu_flags())
    if ("torch", "fp32") not in settings:
        settings.insert(0, ("torch", "fp32"))  # the others are compared with it

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print_machine(machine_info())
        print("building random-weight ViT-B/32 ...", flush=True)
        model_dir = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        print(f"writing {args.images} JPEGs of 4000x3000 ({args.photos}) ...", flush=True)
        paths = make_photos(tmp / "photos", args.images, kind=args.photos)
        print(f"mean JPEG size {sum(p.stat().st_size for p in paths) / len(paths) / 1e6:.2f} MB", flush=True)
        model = SentenceTransformer(str(model_dir), device="cpu")

        bare, runs = run_rounds(args, settings, paths, model_dir, tmp, model)
        print_best(args.rounds, bare, runs)
        naive = bench_naive(paths, model, tmp)
        print(f"naive loop fp32:                     {naive['images_per_s']:6.2f} img/s", flush=True)
        auto = auto_choice(model_dir, tmp, args.batch_size)
        print(auto, flush=True)
        ours = runs["fp32"]
        # The best setting among those that pass the agreement gate (top-10 overlap >= 0.95 both ways).
        best_name, best = max(
            ((n, r) for n, r in runs.items() if passes_gate(r)), key=lambda item: item[1]["images_per_s"]
        )

    result = build_result(args, torch.get_num_threads(), ours, runs, auto, naive, bare, best_name, best)
    print(
        f"imgsearch fp32 / bare model = {result['ratio_vs_bare_model']:.2f}   imgsearch fp32 / naive = "
        f"{result['ratio_vs_naive']:.2f}   best ({best_name}) / bare fp32 = {result['best_ratio_vs_bare_fp32']:.2f}"
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
