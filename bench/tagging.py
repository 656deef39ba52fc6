"""Zero-shot tagging end to end (issue 11): imgsearch against the bare matrix product plus plain upserts, in one run.

Builds a Milvus Lite collection of N rows (random unit 512-d vectors, every metadata column as the indexer
writes it) and a label set of L labels (top 3, min_score 0.1: random vectors then get 1-3 tags each). Then,
side by side in each of ``--rounds`` rounds (the best round of each counts):

- baseline: (a) the bare matrix product ``V @ L.T`` of all N vectors, held in memory as one numpy array, in
  batches of 2,000 (as the real pass reads them), and (b) the same number of plain upserts: ``store.upsert``
  of the N full rows (tags empty) in batches of 2,000, then one flush (the real pass flushes too);
- imgsearch: ``run_tagging`` (indexer/tagging.py): reads the vectors from Milvus Lite, multiplies, decides
  the tags, and writes (partial upsert) the rows whose tags changed, then flushes.

The baseline's upserts run just before the imgsearch pass and leave every row with empty tags, so each pass
starts from untagged rows and writes every row that gets a tag. Separately, once: reading the vectors alone,
and deciding the tags in memory (matrix product, top-3, thresholds).

The labels are embedded by a stand-in whose text vectors are fixed random unit vectors (seeded by each text's
hash), outside every timing: label embedding is one text-encoder pass over L prompts, the same cost for
imgsearch and for any other way, and is not part of the matrix product the issue compares with.

The issue's bar: imgsearch at most 3x the baseline (a) + (b).

Usage: python bench/tagging.py [--images 100000] [--labels 1000] [--rounds 1] [--out bench/results/tagging.json]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info, print_machine, write_result  # noqa: E402

from imgsearch.model.embedder import TextEmbedding  # noqa: E402
from imgsearch.store import MilvusStore, release_hosted  # noqa: E402
from imgsearch.tagging.jobs import READ_BATCH, run_tagging  # noqa: E402
from imgsearch.tagging.labels import make_label_set  # noqa: E402
from imgsearch.tagging.tagger import Tagger, embed_label_set  # noqa: E402
from tests.support.vectors import library_row  # noqa: E402

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.tagging.labels import LabelSet

DIM = 512
TOP = 3
MIN_SCORE = 0.1  # random 512-d unit vectors: cosine ~ N(0, 0.044); the best 3 of 1,000 are about 0.13
INSERT_BATCH = 1000
BASELINE_BATCH = 2000


class StandInTextEncoder:
    """Just what tagging asks of an Embedder: a fixed random unit vector per text (no model is run)."""

    name = "bench-stand-in-text-encoder"
    dim = DIM
    image_size = 224
    max_text_tokens = None
    fingerprint: list[float] = []
    precision = "fp32"
    backend = "none"
    logit_scale = 100.0

    def embed_images(self, images: list[Image.Image]) -> NoReturn:
        raise NotImplementedError("the tagging pass embeds no image")

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        vectors = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            vectors[i] = np.random.default_rng(seed).standard_normal(DIM)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return TextEmbedding(vectors, [False] * len(texts))


def make_vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def rows(vectors: np.ndarray) -> list[dict]:
    """Full rows as the indexer writes them (tags empty), with photo-library paths and metadata."""
    return [library_row(i, vector) for i, vector in enumerate(vectors)]


def upsert_all(store: MilvusStore, made: list[dict], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(made), batch):
        store.upsert(made[start : start + batch])
    return time.perf_counter() - started


def bare_product(vectors: np.ndarray, label_vectors: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(vectors), BASELINE_BATCH):
        _ = vectors[start : start + BASELINE_BATCH] @ label_vectors.T
    return time.perf_counter() - started


def plain_upserts(store: MilvusStore, made: list[dict]) -> float:
    started = time.perf_counter()
    upsert_all(store, made, BASELINE_BATCH)
    store.flush()
    return time.perf_counter() - started


def read_vectors(store: MilvusStore) -> tuple[float, int]:
    started = time.perf_counter()
    count = 0
    for _row in store.iter_rows(fields=["id", "path", "tags", "tag_scores"], with_vectors=True, batch_size=READ_BATCH):
        count += 1
    return time.perf_counter() - started, count


def decide_in_memory(tagger: Tagger, vectors: np.ndarray) -> tuple[float, int]:
    started = time.perf_counter()
    tagged = 0
    for start in range(0, len(vectors), READ_BATCH):
        tagged += sum(bool(tags.names) for tags in tagger.tags(vectors[start : start + READ_BATCH]))
    return time.perf_counter() - started, tagged


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="the baseline and imgsearch are timed once per round, side by side; the best round of each counts",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tagging.json")
    return parser.parse_args()


def run_rounds(
    rounds: int,
    store: MilvusStore,
    encoder: StandInTextEncoder,
    label_set: LabelSet,
    vectors: np.ndarray,
    label_vectors: np.ndarray,
    made: list[dict],
) -> tuple[dict, dict]:
    """The baseline and imgsearch side by side in each round; the best round of each (baseline, imgsearch)."""
    baseline, ours = None, None
    for round_ in range(1, rounds + 1):
        product_s = bare_product(vectors, label_vectors)
        upserts_s = plain_upserts(store, made)
        timed = {"matrix_product_s": product_s, "plain_upserts_s": upserts_s, "seconds": product_s + upserts_s}
        print(
            f"round {round_}: baseline: matrix product {product_s:6.2f} s + plain upserts {upserts_s:6.1f} s "
            f"= {timed['seconds']:6.1f} s",
            flush=True,
        )
        baseline = timed if baseline is None or timed["seconds"] < baseline["seconds"] else baseline
        started = time.perf_counter()
        report = run_tagging(store, encoder, label_set)
        elapsed = time.perf_counter() - started
        run = {"seconds": elapsed, "images": report.images, "tagged": report.tagged, "updated": report.updated}
        print(
            f"round {round_}: imgsearch run_tagging: {elapsed:6.1f} s; {report.images:,} images, "
            f"{report.tagged:,} tagged, {report.updated:,} rows updated",
            flush=True,
        )
        ours = run if ours is None or run["seconds"] < ours["seconds"] else ours
    return baseline, ours


def measure_apart(
    store: MilvusStore,
    encoder: StandInTextEncoder,
    label_set: LabelSet,
    vectors: np.ndarray,
    label_vectors: np.ndarray,
    images: int,
) -> dict:
    """Once, outside the rounds: reading the vectors alone, deciding the tags in memory, the product all at once."""
    read_s, read_rows = read_vectors(store)
    tagger = Tagger(encoder, [label_set])
    decide_s, tagged = decide_in_memory(tagger, vectors)
    tags_per_image = sum(len(row["tags"]) for row in store.iter_rows(fields=["id", "tags"])) / images
    all_at_once_started = time.perf_counter()
    _ = vectors @ label_vectors.T
    all_at_once_s = time.perf_counter() - all_at_once_started
    return {
        "read_s": read_s,
        "read_rows": read_rows,
        "decide_s": decide_s,
        "tagged": tagged,
        "tags_per_image": tags_per_image,
        "all_at_once_s": all_at_once_s,
    }


def print_summary(
    args: argparse.Namespace, baseline: dict, ours: dict, apart: dict, ratio: float, rest_s: float
) -> None:
    print(f"\nbest of {args.rounds} round(s); {args.images:,} images x {args.labels:,} labels")
    print(f"  baseline (a) bare matrix product, batches of {BASELINE_BATCH}: {baseline['matrix_product_s']:8.2f} s")
    print(
        f"  baseline (b) plain upserts of {args.images:,} full rows, batches of {BASELINE_BATCH}, + flush: "
        f"{baseline['plain_upserts_s']:8.1f} s"
    )
    print(f"  baseline (a) + (b):                                {baseline['seconds']:8.1f} s")
    print(
        f"  imgsearch run_tagging end to end:                  {ours['seconds']:8.1f} s "
        f"({ours['updated']:,} rows updated, from empty tags)"
    )
    print(f"  imgsearch / baseline = {ratio:.2f}  (the issue's bar: at most 3)")
    print(
        f"  measured apart: reading {apart['read_rows']:,} vectors {apart['read_s']:.1f} s; deciding tags in memory "
        f"(product, top-{TOP}, thresholds) {apart['decide_s']:.1f} s ({apart['tagged']:,} tagged); the rest of the "
        f"pass (writes, flush, row compare) {rest_s:.1f} s by subtraction; the product all at once "
        f"{apart['all_at_once_s']:.2f} s; {apart['tags_per_image']:.2f} tags per image"
    )


def build_result(
    args: argparse.Namespace,
    setup_s: float,
    baseline: dict,
    ours: dict,
    apart: dict,
    ratio: float,
    rest_s: float,
    info: dict,
) -> dict:
    return {
        "benchmark": "tagging",
        "images": args.images,
        "labels": args.labels,
        "dim": DIM,
        "top": TOP,
        "min_score": MIN_SCORE,
        "label_embedding": "stand-in random unit vectors, not timed (one text-encoder pass, the same either way)",
        "rounds": args.rounds,
        "setup_insert_s": setup_s,
        "baseline": baseline
        | {
            "matrix_product": f"in batches of {BASELINE_BATCH}",
            "plain_upserts": f"full rows in batches of {BASELINE_BATCH}, then one flush",
        },
        "imgsearch": ours | {"start": "every row's tags empty (written so by the baseline's upserts)"},
        "ratio_vs_baseline": ratio,
        "breakdown": {
            "read_vectors_s": apart["read_s"],
            "decide_in_memory_s": apart["decide_s"],
            "rest_by_subtraction_s": rest_s,
            "matrix_product_all_at_once_s": apart["all_at_once_s"],
            "tagged_in_memory": apart["tagged"],
            "tags_per_image": apart["tags_per_image"],
        },
        **info,
    }


def main() -> int:
    args = parse_args()

    info = machine_info()
    print_machine(info)
    encoder = StandInTextEncoder()
    label_set = make_label_set("bench", [f"label {i}" for i in range(args.labels)], top=TOP, min_score=MIN_SCORE)
    label_vectors = embed_label_set(encoder, label_set).vectors
    print(
        f"{args.images:,} images x {args.labels:,} labels, {DIM}-d; top {TOP}, min_score {MIN_SCORE}; labels embedded "
        "by a stand-in (random unit vectors), outside every timing",
        flush=True,
    )
    vectors = make_vectors(args.images)
    made = rows(vectors)

    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "milvus.db")
        store = MilvusStore(uri, "images")
        store.ensure_collection(encoder.name, DIM)
        setup_s = upsert_all(store, made, INSERT_BATCH)
        store.flush()
        print(
            f"setup (not measured): inserted {store.count():,} rows in {setup_s:.1f} s (batches of {INSERT_BATCH})",
            flush=True,
        )

        baseline, ours = run_rounds(args.rounds, store, encoder, label_set, vectors, label_vectors, made)
        apart = measure_apart(store, encoder, label_set, vectors, label_vectors, args.images)
        store.close()
        release_hosted(uri)

    ratio = ours["seconds"] / baseline["seconds"]
    rest_s = ours["seconds"] - apart["read_s"] - apart["decide_s"]
    print_summary(args, baseline, ours, apart, ratio, rest_s)
    result = build_result(args, setup_s, baseline, ours, apart, ratio, rest_s, info)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
